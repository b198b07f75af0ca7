"""From a nested mapping (a YAML file plus command-line overrides) to a validated
:class:`~jat.config.Config`, or a :class:`ConfigError` naming the source and the dotted key.

Every key has a source: the file (or the name given to :func:`config_from_dict`), unless a
``key.path=value`` override set it, in which case an error about it blames the "command line".
Pydantic's :class:`~pydantic.ValidationError` is translated: an unknown key gets the closest
valid name, a value error keeps jat's message, a cross-field error names its keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from jat.config.model_section import FILE_CONTEXT
from jat.config.options import Config, section_class
from jat.config.values import Invalid, show, suggest

COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """An invalid configuration. ``str(err)`` is ``"<source>: <dotted.key>: <message>"``."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.message, self.source, self.key = message, source, key
        super().__init__("".join(f"{part}: " for part in (source, key) if part) + message)


class Sources:
    """Where each key came from: the file (or dict) unless a command-line override set it."""

    def __init__(self, source: str, cli_keys: Iterable[str] = ()):
        self.source = source
        self.cli_keys = tuple(cli_keys)

    def source_of(self, key: str) -> str:
        for set_key in self.cli_keys:
            if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
                return COMMAND_LINE
        return self.source

    def error(self, keys: Sequence[str], message: str) -> ConfigError:
        """The error about ``keys`` (none: the whole configuration), blaming the first key set
        on the command line if there is one (it is what the user just typed)."""
        if not keys:
            return ConfigError(message, source=self.source)
        blamed = next((k for k in keys if self.source_of(k) == COMMAND_LINE), keys[0])
        return ConfigError(message, source=self.source_of(blamed), key=blamed)


def translate(err: ValidationError, sources: Sources) -> ConfigError:
    """The first error of a pydantic validation as a :class:`ConfigError`."""
    detail = err.errors(include_url=False)[0]
    loc = tuple(str(part) for part in detail["loc"])
    prefix = ".".join(loc)
    cause = (detail.get("ctx") or {}).get("error")
    if detail["type"] == "extra_forbidden":
        section = section_class(loc[:-1])
        valid = section.model_fields if section is not None else ()
        return sources.error([prefix], f"unknown key; {suggest(loc[-1], valid)}")
    if isinstance(cause, Invalid):
        keys = [f"{prefix}.{k}" if prefix else k for k in cause.keys]
        return sources.error(keys or ([prefix] if prefix else []), str(cause))
    message = str(cause) if isinstance(cause, ValueError) else detail["msg"]
    return sources.error([prefix] if prefix else [], message)


def validate(raw: Any, sources: Sources) -> Config:
    """``raw`` (a nested mapping as in the file; ``None``: empty) as a :class:`Config`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise sources.error([], f"the top level must be a mapping of options, got {show(raw)}")
    try:
        return Config.model_validate(raw, context=FILE_CONTEXT)
    except ValidationError as err:
        raise translate(err, sources) from None


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a (nested) mapping, e.g. from YAML, into a :class:`Config`; absent keys take
    their defaults.

    Raises:
        ConfigError: naming ``source`` and the dotted key.
    """
    return validate(d, Sources(source))


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def _is_key(text: str) -> bool:
    return all(part.isidentifier() and part.isascii() for part in text.split("."))


def _thaw(value: Any) -> Any:
    """A deep copy with every mapping a dict (overrides write into it)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def apply_overrides(raw: Any, overrides: Sequence[str]) -> tuple[Any, list[str]]:
    """``raw`` with ``key.path=value`` overrides set (values parsed as YAML), and the keys set.

    Raises:
        ConfigError: (source "command line") for a malformed override.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    if not overrides:
        return raw, []
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return raw, []  # reported by validation against the file
    result = _thaw(raw)
    keys = []
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ConfigError(
                f"{override!r}: expected key=value (e.g. training.epochs=20)", source=COMMAND_LINE
            )
        key, _, text = override.partition("=")
        key = key.strip()
        if not _is_key(key):
            raise ConfigError(
                f"{override!r}: {key!r} is not a dotted key (e.g. training.epochs)",
                source=COMMAND_LINE,
            )
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            raise ConfigError(
                f"cannot parse the value {text!r} as YAML: {problem}",
                source=COMMAND_LINE,
                key=key,
            ) from None
        *parents, last = key.split(".")
        node = result
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"cannot set {key}: {section} is {show(child)}, not a section",
                    source=COMMAND_LINE,
                    key=key,
                )
            node = child
        node[last] = value
        keys.append(key)
    return result, keys


__all__ = [
    "COMMAND_LINE",
    "ConfigError",
    "Sources",
    "apply_overrides",
    "config_from_dict",
    "translate",
    "validate",
]
