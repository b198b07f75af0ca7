"""YAML in and out: :func:`load_config` (a file plus overrides), :func:`dump_config` and
:func:`template` (YAML with every option's description as a comment, generated from the section
models), :func:`config_to_dict` (the plain nested form that :func:`config_from_dict` inverts).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic.fields import FieldInfo

from jat.config.model_section import (
    DEFAULT_HYPER,
    DEFAULT_MODEL,
    ModelConfig,
    class_defaults,
    model_classes,
)
from jat.config.options import Config
from jat.config.parsing import ConfigError, Sources, apply_overrides, validate
from jat.config.values import Section, choices_of, flow, plain

#: The resolved configuration in a run directory.
RUN_CONFIG_FILE = "config.yaml"
HEADER = '# jat training configuration. Units: Å, eV, eV/Å. Durations: seconds or "20m", "1.5h".'
COMMENT_COLUMN = 26
_WIDTH = 100


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key; let PyYAML report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML, duplicate keys rejected.

    Raises:
        ConfigError: naming ``source``, the line and the column.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}invalid YAML: {problem}", source=source) from None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML configuration (``None``: all defaults), apply ``key.path=value`` overrides
    (each value parsed with ``yaml.safe_load``; an override replaces what it names, and may add
    model hyperparameters) and validate.

    Raises:
        ConfigError: naming the file or "command line" and the dotted key.
    """
    if path is None:
        raw, source = {}, "<defaults>"
    else:
        source = str(path)
        raw = read_yaml_file(path)
    raw, cli_keys = apply_overrides(raw, overrides)
    return validate(raw, Sources(source, cli_keys))


def read_yaml_file(path: str | os.PathLike) -> Any:
    """The parsed YAML of the file at ``path``. Raises ConfigError naming the file when it is
    missing, unreadable or not YAML."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read: {err}", source=source) from None
    return read_yaml(text, source)


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The configuration stored in a run directory (``RUN_DIR/config.yaml``), validated.

    Raises:
        ConfigError: if ``run_dir`` has no configuration, or an invalid one.
    """
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"not a jat run directory (no {RUN_CONFIG_FILE})", source=str(run_dir))
    return load_config(path)


def config_to_dict(c: Config) -> dict[str, Any]:
    """``c`` as nested plain dicts, lists and scalars, as in the YAML file (model hyperparameters
    flattened into ``model``; one file is written as a string); ``config_from_dict`` inverts it."""
    return c.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# Commented YAML


def comment(info: FieldInfo) -> str:
    """The template comment of an option: its choices, then its description."""
    text = info.description or ""
    choices = choices_of(info)
    if choices is not None:
        text = " | ".join(choices) + (f"; {text}" if text else "")
    return text


def _hyper_catalogue(pad: str) -> list[str]:
    """Comment lines listing each model's hyperparameters with their class defaults."""
    lines = [f"{pad}# hyperparameters of each model, with the class's defaults:"]
    for name, cls in model_classes().items():
        items = ", ".join(f"{k}: {flow(plain(v))}" for k, v in class_defaults(cls).items())
        wrapped = textwrap.wrap(
            f"{name}: {items}",
            width=_WIDTH,
            initial_indent=f"{pad}#   ",
            subsequent_indent=f"{pad}#     ",
            break_on_hyphens=False,
        )
        lines.extend(wrapped)
    return lines


def _emit(
    obj: Section,
    dumped: dict[str, Any],
    indent: int,
    comments: bool,
    catalogue: bool,
    lines: list[str],
) -> None:
    pad = " " * indent

    def line(key: str, value: Any, doc: str) -> None:
        text = f"{pad}{key}: {flow(value)}"
        if comments and doc:
            text = f"{text.ljust(COMMENT_COLUMN - 1)} # {doc}"
        lines.append(text)

    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        if isinstance(value, Section):
            if indent == 0:
                lines.append("")
            lines.append(f"{pad}{name}:")
            _emit(value, dumped[name], indent + 2, comments, catalogue, lines)
        elif isinstance(obj, ModelConfig) and name == "hyper":
            doc = info.description or ""
            if value == DEFAULT_HYPER and obj.name == DEFAULT_MODEL:
                doc += "; here JAT's"
            if not value and comments:
                lines.append(f"{pad}# {doc} (none set: the model's defaults)")
            for k, key in enumerate(value):
                line(key, dumped[key], doc if k == 0 else "")
            if comments and catalogue:
                lines.extend(_hyper_catalogue(pad))
        else:
            line(name, dumped[name], comment(info))


def _yaml(c: Config, comments: bool, catalogue: bool) -> str:
    lines = [HEADER] if comments else []
    _emit(c, config_to_dict(c), 0, comments, catalogue, lines)
    if not comments and lines and lines[0] == "":
        lines = lines[1:]
    return "\n".join(lines) + "\n"


def dump_config(c: Config, *, comments: bool = True) -> str:
    """``c`` as YAML in the layout of :func:`template` (with its comments unless
    ``comments=False``); ``load_config`` reads it back to an equal ``Config``."""
    return _yaml(c, comments, catalogue=False)


def template() -> str:
    """The commented YAML template: every option at its default with its description, and the
    hyperparameters of every model."""
    return _yaml(Config(), comments=True, catalogue=True)


__all__ = [
    "COMMENT_COLUMN",
    "HEADER",
    "RUN_CONFIG_FILE",
    "comment",
    "config_to_dict",
    "dump_config",
    "load_config",
    "load_run_config",
    "read_yaml",
    "template",
]
