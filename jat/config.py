"""The training configuration: a YAML file, checked against a schema of frozen dataclasses.

    cfg = load_config("ean.yaml", ["training.epochs=20", "model.width=64"])
    cfg.training.epochs, cfg.model.name, dict(cfg.model.hyper)

Every option is a dataclass field whose metadata holds its template comment and its parser, so
:func:`template` (the commented YAML template), the checks and the defaults cannot drift apart.
Unknown keys are rejected with the closest valid name; every error is a :class:`ConfigError`
naming the source (file name or "command line") and the dotted key. Validating a ``model``
section imports :mod:`jat.models` (and JAX); nothing else does.

The ``model`` section holds ``name``, ``cutoff`` and ``dtype`` plus any hyperparameter of the
chosen model class in :data:`jat.models.MODELS` (its dataclass fields, less ``parent``, ``name``,
``num_species`` and ``cutoff``), kept in :attr:`ModelConfig.hyper`. The default hyperparameters
(``layers: 3, width: 32, heads: 1``) belong to the default model and apply only while
``model.name`` is left at (or set to) that model; any other model starts from its own defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Ani1Config",
    "Config",
    "ConfigError",
    "DataConfig",
    "FrozenMapping",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SplitConfig",
    "TrainingConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_duration",
    "template",
]

COMMAND_LINE = "command line"
_HEADER = '# jat training configuration. Units: Å, eV, eV/Å. Durations: seconds or "20m", "1.5h".'
_COMMENT_COLUMN = 26
# Model-class fields that are not hyperparameters: set by Flax, or from data.species / model.cutoff.
_NOT_HYPER = frozenset({"parent", "name", "num_species", "cutoff"})
_SET_ELSEWHERE = {"num_species": " (the number of elements in data.species or in the data)"}


class ConfigError(ValueError):
    """An invalid configuration. ``str(err)`` is ``"<source>: <dotted.key>: <message>"``."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.message, self.source, self.key = message, source, key
        super().__init__("".join(f"{part}: " for part in (source, key) if part) + message)


class _Invalid(ValueError):
    """A bad value, raised by the parsers; the caller adds the source and the key."""


class FrozenMapping(Mapping):
    """A read-only, hashable mapping (insertion order kept); values must be hashable."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | Iterable[tuple[str, Any]] = (), **kwargs: Any):
        self._data = dict(data, **kwargs)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


# ---------------------------------------------------------------------------------------------
# Value parsers: value from YAML -> stored value, or _Invalid


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list {_yaml_value(value)}" if len(value) < 8 else "a list"
    return repr(value)


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _expected("an integer", value)


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
        try:
            result = float(value)
        except ValueError:
            raise _expected("a number", value) from None
    else:
        raise _expected("a number", value)
    if not math.isfinite(result):
        raise _Invalid(f"must be finite; got {_show(value)}")
    return result


def _bounds(result: float, gt=None, ge=None, lt=None, le=None) -> None:
    tests = (
        (gt, ">", result > gt if gt is not None else True),
        (ge, ">=", result >= ge if ge is not None else True),
        (lt, "<", result < lt if lt is not None else True),
        (le, "<=", result <= le if le is not None else True),
    )
    if not all(ok for _, _, ok in tests):
        condition = " and ".join(f"{op} {bound}" for bound, op, _ in tests if bound is not None)
        raise _Invalid(f"must be {condition}; got {result!r}")


def _int(*, gt: int | None = None, ge: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        result = _to_int(value)
        _bounds(result, gt=gt, ge=ge)
        return result

    return parse


def _float(*, gt=None, ge=None, lt=None, le=None) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        result = _to_float(value)
        _bounds(result, gt=gt, ge=ge, lt=lt, le=le)
        return result

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected("true or false", value)


def _str(*, choices: Sequence[str] | None = None, null_as: str | None = None) -> Callable:
    def parse(value: Any) -> str:
        if value is None and null_as is not None:
            return null_as
        if isinstance(value, (int, float)) and not isinstance(value, bool) and choices is None:
            value = str(value)
        if not isinstance(value, str):
            if choices is not None:
                raise _Invalid(f"must be one of {', '.join(choices)}; got {_show(value)}")
            raise _expected("a string", value)
        if choices is not None and value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}; got {value!r}")
        if not value.strip():
            raise _Invalid("must not be empty")
        return value

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_optional


def _str_list(item: Callable[[Any], str], *, single: bool, what: str) -> Callable:
    """A list of strings (stored as a tuple); ``single``: a lone string is a list of one."""

    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) and single:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _expected(what, value)
        items = []
        for k, entry in enumerate(value):
            try:
                items.append(item(entry))
            except _Invalid as err:
                raise _Invalid(f"entry {k}: {err}") from None
        return tuple(items)

    return parse


def _path(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise _expected("a file name", value)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _files(value: Any) -> tuple[str, ...]:
    result = _str_list(_path, single=True, what="a file name or a list of file names")(value)
    if not result:
        raise _Invalid("expected at least one file")
    return result


_ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se
    Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy
    Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf
    Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split()
)


def _element(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("an element symbol", value)
    if value not in _ELEMENTS:
        close = difflib.get_close_matches(value.capitalize(), sorted(_ELEMENTS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _Invalid(f"{value!r} is not an element symbol{hint}")
    return value


def _species(value: Any) -> tuple[str, ...]:
    result = _str_list(_element, single=False, what="a list of element symbols")(value)
    if not result:
        raise _Invalid("expected at least one element")
    repeated = sorted({s for s in result if result.count(s) > 1})
    if repeated:
        raise _Invalid(f"repeated element(s) {', '.join(repeated)}")
    return result


def _symbols_in(text: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, text):
        raise _Invalid(f"{text!r} is not {what}")
    for symbol in re.findall(r"[A-Z][a-z]?", text):
        if symbol not in _ELEMENTS:
            raise _Invalid(f"{text!r}: {symbol!r} is not an element symbol")
    return text


def _unit(value: Any) -> str:
    """A repeating unit written as its atoms in order, e.g. ``NHHHCHHCHHH``."""
    if not isinstance(value, str):
        raise _expected("a string of element symbols", value)
    return _symbols_in(value, r"(?:[A-Z][a-z]?)+", "a sequence of element symbols")


def _formula(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a chemical formula", value)
    return _symbols_in(value, r"(?:[A-Z][a-z]?\d*)+", "a chemical formula (e.g. C2H6)")


def _amount(value: Any) -> float | int:
    """A fraction (0 <= x < 1, stored as float) or a count (integer >= 1, stored as int)."""
    result = _to_float(value)
    if result < 0:
        raise _Invalid(f"must be >= 0; got {_show(value)}")
    if result < 1:
        return result
    if not result.is_integer():
        raise _Invalid(f"a fraction must be < 1 and a number a whole number; got {_show(value)}")
    return int(result)


def _run_name(value: Any) -> str:
    result = _str()(value)
    if "/" in result or "\\" in result or result in (".", ".."):
        raise _Invalid(f"must be a plain name (it names a directory); got {result!r}")
    return result


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([dhms])"


def parse_duration(value: float | int | str) -> float:
    """Seconds in a duration: a number of seconds (``90``, ``"90"``) or a string of parts with units
    d, h, m, s (``"90s"``, ``"20m"``, ``"1.5h"``, ``"1h30m"``, ``"1h 30m 15s"``).

    Raises:
        ValueError: for anything else, a negative or non-finite value or a repeated unit.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration, got {_show(value)}")
    hint = "; use seconds or e.g. '90s', '20m', '1.5h', '1h30m'"
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not re.fullmatch(rf"(?:{_DURATION_PART}\s*)+", text):
                raise ValueError(f"invalid duration {value!r}{hint}") from None
            parts = re.findall(_DURATION_PART, text)
            units = [unit for _, unit in parts]
            if len(set(units)) != len(units):
                raise ValueError(f"invalid duration {value!r}: repeated unit{hint}") from None
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be finite and >= 0")
    return seconds


def _time_budget(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    if seconds <= 0:
        raise _Invalid(f"must be > 0; got {_show(value)}")
    return seconds


def _opt(default: Any, doc: str = "", parse: Callable[[Any], Any] | None = None, **meta: Any):
    """A configuration option: its default, its template comment and its parser."""
    return field(default=default, metadata={"doc": doc, "parse": parse, **meta})


def _section(cls: type):
    return field(default_factory=cls, metadata={"section": cls})


# ---------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class Ani1Config:
    fraction: float = _opt(
        1.0,
        "fraction of each molecule's conformations drawn (the thesis used 0.05)",
        _float(gt=0, le=1),
    )
    high_energy: bool = _opt(
        False, "also read the high-energy conformations (coordinatesHE)", _bool
    )


@dataclass(frozen=True)
class SplitConfig:
    by: str = _opt(
        "auto",
        "configuration | molecule | auto (molecule for ANI-1, else configuration)",
        _str(choices=("configuration", "molecule", "auto")),
    )
    validation: float | int = _opt(
        0.1, "fraction (< 1) or number (>= 1) of structures for validation", _amount
    )
    test: float | int = _opt(
        0.0, "fraction or number held out for testing; by molecule: of whole molecules", _amount
    )
    n_train: int | None = _opt(
        None, "cap on the number of training structures after the split", _optional(_int(gt=0))
    )
    exclude_formulas: tuple[str, ...] = _opt(
        (),
        "formulas (e.g. [C2H6]) kept out of training, evaluated as out-of-sample",
        _str_list(_formula, single=True, what="a list of formulas"),
    )

    def _checks(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if 0 < self.validation < 1 and 0 < self.test < 1 and self.validation + self.test >= 1:
            yield (
                ("validation", "test"),
                (
                    f"validation and test fractions add up to {self.validation + self.test:g}; "
                    "nothing is left for training"
                ),
            )


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = _opt(
        ("builtin",),
        'file or list of files; "builtin" = the EAN GFN2-xTB set shipped with jat',
        _files,
        one_or_many=True,
    )
    validation: tuple[str, ...] | None = _opt(
        None,
        "optional separate file(s); null = split off the training files",
        _optional(_files),
        one_or_many=True,
    )
    test: tuple[str, ...] | None = _opt(
        None,
        "optional separate file(s) for a final test evaluation",
        _optional(_files),
        one_or_many=True,
    )
    format: str = _opt(
        "auto",
        "auto | neuralil | ani1 | md17 | ase (auto: by file extension)",
        _str(choices=("auto", "neuralil", "ani1", "md17", "ase")),
    )
    species: tuple[str, ...] | None = _opt(
        None,
        "element symbols, e.g. [H, C, N, O]; null = every element in the data",
        _optional(_species),
    )
    composition: tuple[str, ...] | None = _opt(
        None,
        "neuralil format only: repeating units, e.g. [NHHHCHHCHHH, NOOO]; null = EAN",
        _optional(_str_list(_unit, single=False, what="a list of repeating units")),
    )
    ani1: Ani1Config = _section(Ani1Config)
    split: SplitConfig = _section(SplitConfig)

    def _checks(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if self.composition is not None and self.format not in ("auto", "neuralil"):
            yield ("composition",), f"only used by the neuralil format, not {self.format!r}"
        if self.composition is not None and not self.composition:
            yield ("composition",), "expected at least one repeating unit (null = EAN)"


_DEFAULT_MODEL = "jat"
_DEFAULT_HYPER = FrozenMapping(layers=3, width=32, heads=1)


@dataclass(frozen=True)
class ModelConfig:
    """``hyper``: the model's hyperparameters given in the configuration (keyword arguments of
    ``jat.models.MODELS[name]``; the class supplies the rest). Lists are stored as tuples and
    mappings as :class:`FrozenMapping`."""

    name: str = _opt(_DEFAULT_MODEL, "jat | schnet (see jat.models)", None)
    cutoff: float = _opt(5.0, "neighbour cutoff r_c (Å)", _float(gt=0))
    dtype: str = _opt("float32", "float32 | float64", _str(choices=("float32", "float64")))
    repulsion: str = _opt(
        "none",
        "none | zbl: fixed ZBL repulsion at short range, for stable MD",
        _str(choices=("none", "zbl")),
    )
    repulsion_radii: str = _opt(
        "data",
        "data | covalent: ZBL ends at each pair's shortest training distance, or as below",
        _str(choices=("data", "covalent")),
    )
    repulsion_radius_scale: float = _opt(
        0.8,
        "covalent: off at this x (R_a + R_b) (also pairs absent from the data)",
        _float(gt=0),
    )
    hyper: Mapping[str, Any] = _opt(
        _DEFAULT_HYPER,
        "any hyperparameter of the model",
        None,
        hyper=True,
        template_doc="any hyperparameter of the model; here JAT's",
    )


@dataclass(frozen=True)
class LossConfig:
    forces_weight: float = _opt(1.0, "weight of the force term", _float(ge=0))
    energy_weight: float = _opt(0.0, "weight ρ of the energy-per-atom term", _float(ge=0))
    forces_alpha: float = _opt(0.1, "log-cosh scale α of force components (eV/Å)", _float(gt=0))
    energy_alpha: float = _opt(
        0.01, "log-cosh scale α of the energy per atom (eV/atom)", _float(gt=0)
    )

    def _checks(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if self.forces_weight == 0 and self.energy_weight == 0:
            yield (
                ("forces_weight", "energy_weight"),
                ("forces_weight and energy_weight are both 0; nothing would be trained"),
            )


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = _opt("adam", "adam | adamw", _str(choices=("adam", "adamw")))
    schedule: str = _opt(
        "onecycle",
        "onecycle | constant (constant uses lr_max)",
        _str(choices=("onecycle", "constant")),
    )
    lr_min: float = _opt(
        5.0e-4, "one-cycle: start, reached again at 90 % of the steps", _float(gt=0)
    )
    lr_max: float = _opt(3.0e-3, "one-cycle: peak at 45 % of the steps", _float(gt=0))
    lr_final: float = _opt(5.0e-6, "one-cycle: value at the last step", _float(gt=0))
    per_epoch: bool = _opt(
        False, "restart the cycle every epoch (the original code's behaviour)", _bool
    )
    weight_decay: float = _opt(0.0, "decoupled weight decay (adamw only)", _float(ge=0))
    clip_norm: float | None = _opt(
        10.0, "clip the global gradient norm; null = no clipping", _optional(_float(gt=0))
    )
    ema_decay: float | None = _opt(
        0.99,
        "exponential moving average of the parameters; null = off",
        _optional(_float(ge=0, lt=1)),
    )

    def _checks(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if self.weight_decay > 0 and self.name != "adamw":
            yield (
                ("weight_decay", "name"),
                (
                    f"weight_decay = {self.weight_decay:g} needs optimizer.name: adamw "
                    f"(got {self.name!r})"
                ),
            )
        if self.schedule == "onecycle":
            for low in ("lr_min", "lr_final"):
                if getattr(self, low) > self.lr_max:
                    yield (
                        (low, "lr_max"),
                        (
                            f"{low} = {getattr(self, low):g} exceeds the one-cycle peak "
                            f"lr_max = {self.lr_max:g}"
                        ),
                    )


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = _opt(200, "number of epochs (an upper bound when time_budget is set)", _int(gt=0))
    batch_size: int = _opt(8, "structures per training step", _int(gt=0))
    eval_batch_size: int | None = _opt(
        None, "structures per evaluation step; null = batch_size", _optional(_int(gt=0))
    )
    time_budget: float | None = _opt(
        None,
        "wall-clock budget for the whole run; the schedule is fitted to it",
        _optional(_time_budget),
    )
    patience: int | None = _opt(
        None,
        "stop after this many epochs without a better validation score",
        _optional(_int(gt=0)),
    )
    monitor: str = _opt(
        "auto",
        "forces_mae | energy_mae | loss; auto: forces_mae if forces are trained",
        _str(choices=("auto", "forces_mae", "energy_mae", "loss")),
    )
    eval_every: int = _opt(1, "validate every this many epochs", _int(gt=0))
    max_buckets: int = _opt(4, "maximum number of static batch shapes (compilations)", _int(gt=0))
    energy_reference: str = _opt(
        "fit",
        "fit: per-species shift by least squares on element counts | none",
        _str(choices=("fit", "none"), null_as="none"),
    )
    checkpoint_every: int = _opt(
        1, 'write the "last" checkpoint every this many epochs', _int(gt=0)
    )


@dataclass(frozen=True)
class LoggingConfig:
    progress: str = _opt(
        "auto",
        "auto (bar on a terminal, lines otherwise) | bar | lines | none",
        _str(choices=("auto", "bar", "lines", "none"), null_as="none"),
    )
    wandb: bool = _opt(False, "log to Weights & Biases", _bool)
    wandb_project: str = _opt("jat", "", _str())
    wandb_mode: str = _opt("offline", "offline | online", _str(choices=("offline", "online")))


@dataclass(frozen=True)
class Config:
    name: str = _opt(
        "jat",
        "run name; the run directory is <output_dir>/<name>-<YYYYmmdd-HHMMSS> unless run_dir is "
        "set",
        _run_name,
    )
    run_dir: str | None = _opt(
        None, "explicit run directory (null: made from output_dir and name)", _optional(_path)
    )
    output_dir: str = _opt("runs", "parent directory of new run directories", _path)
    seed: int = _opt(0, "seeds the split, the shuffling and the initial parameters", _int(ge=0))
    data: DataConfig = _section(DataConfig)
    model: ModelConfig = _section(ModelConfig)
    loss: LossConfig = _section(LossConfig)
    optimizer: OptimizerConfig = _section(OptimizerConfig)
    training: TrainingConfig = _section(TrainingConfig)
    logging: LoggingConfig = _section(LoggingConfig)


# ---------------------------------------------------------------------------------------------
# Validation


class _Context:
    """The source of every key: the file (or dict) unless a command-line override set it."""

    def __init__(self, source: str, cli_keys: Iterable[str] = ()):
        self.source = source
        self.cli_keys = tuple(cli_keys)

    def source_of(self, key: str) -> str:
        for set_key in self.cli_keys:
            if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
                return COMMAND_LINE
        return self.source

    def error(self, key: str | Sequence[str] | None, message: str) -> ConfigError:
        if key is None:
            return ConfigError(message, source=self.source)
        keys = [key] if isinstance(key, str) else list(key)
        # Blame a key set on the command line if there is one (it is what the user just typed).
        blamed = next((k for k in keys if self.source_of(k) == COMMAND_LINE), keys[0])
        return ConfigError(message, source=self.source_of(blamed), key=blamed)


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _suggest(name: str, valid: Iterable[str], what: str = "valid keys") -> str:
    """A hint: the closest valid name, else the candidates containing ``name``, else all."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    if not close and len(name) >= 2:
        close = [v for v in valid if name in v or v in name]
    if len(close) == 1:
        return f"did you mean {close[0]!r}?"
    if close:
        return f"did you mean one of {', '.join(close)}?"
    return f"{what}: {', '.join(valid)}"


def _unknown_key_message(name: str, valid: Iterable[str]) -> str:
    return f"unknown key; {_suggest(name, valid)}"


def _as_section(raw: Any, prefix: str, ctx: _Context) -> Mapping[str, Any]:
    if raw is None:  # "data:" with everything commented out
        return {}
    if not isinstance(raw, Mapping):
        raise ctx.error(prefix or None, f"expected a mapping of options, got {_show(raw)}")
    for key in raw:
        if not isinstance(key, str):
            raise ctx.error(
                _dotted(prefix, str(key)) if prefix else None,
                f"keys must be strings, got {_show(key)}" + (f" in {prefix}" if prefix else ""),
            )
    return raw


def _parse_section(cls: type, raw: Any, prefix: str, ctx: _Context) -> Any:
    if cls is ModelConfig:
        return _parse_model(raw, prefix, ctx)
    raw = _as_section(raw, prefix, ctx)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ctx.error(_dotted(prefix, key), _unknown_key_message(key, fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = _dotted(prefix, name)
        if "section" in f.metadata:
            kwargs[name] = _parse_section(f.metadata["section"], raw[name], key, ctx)
        else:
            kwargs[name] = _parse_value(f.metadata["parse"], raw[name], key, ctx)
    return _checked(cls(**kwargs), prefix, ctx)


def _parse_value(parse: Callable[[Any], Any], value: Any, key: str, ctx: _Context) -> Any:
    try:
        return parse(value)
    except _Invalid as err:
        raise ctx.error(key, str(err)) from None


def _checked(obj: Any, prefix: str, ctx: _Context) -> Any:
    checks = getattr(obj, "_checks", None)
    if checks is not None:
        for keys, message in checks():
            raise ctx.error([_dotted(prefix, k) for k in keys], message)
    return obj


def _model_classes() -> Mapping[str, type]:
    from jat.models import MODELS  # lazy: imports JAX and Flax

    return MODELS


@functools.cache
def _hyperparameters(cls: type) -> dict[str, Any]:
    """Hyperparameter name -> type hint (``Any`` where the hints cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    return {
        f.name: hints.get(f.name, Any)
        for f in dataclasses.fields(cls)
        if f.name not in _NOT_HYPER and f.init
    }


def _parse_model(raw: Any, prefix: str, ctx: _Context) -> ModelConfig:
    raw = _as_section(raw, prefix, ctx)
    fixed = {f.name: f for f in dataclasses.fields(ModelConfig) if not f.metadata.get("hyper")}
    models = _model_classes()
    name_key = _dotted(prefix, "name")
    name = raw.get("name", _DEFAULT_MODEL)
    if not isinstance(name, str) or name not in models:
        message = f"must be one of {', '.join(models)}; got {_show(name)}"
        close = difflib.get_close_matches(name, list(models), n=1) if isinstance(name, str) else []
        raise ctx.error(name_key, message + (f" (did you mean {close[0]!r}?)" if close else ""))
    kwargs: dict[str, Any] = {"name": name}
    for field_name in (
        "cutoff", "dtype", "repulsion", "repulsion_radii", "repulsion_radius_scale"
    ):
        if field_name in raw:
            parse = fixed[field_name].metadata["parse"]
            kwargs[field_name] = _parse_value(
                parse, raw[field_name], _dotted(prefix, field_name), ctx
            )
    valid = _hyperparameters(models[name])
    hyper: dict[str, Any] = dict(_DEFAULT_HYPER) if name == _DEFAULT_MODEL else {}
    for key, value in raw.items():
        if key in fixed:
            continue
        dotted = _dotted(prefix, key)
        if key in _NOT_HYPER:
            raise ctx.error(dotted, f"not a model setting{_SET_ELSEWHERE.get(key, '')}")
        if key not in valid:
            hint = _suggest(key, [*fixed, *valid], "valid keys")
            raise ctx.error(dotted, f"not a hyperparameter of model {name!r}; {hint}")
        hyper[key] = _parse_value(lambda v, hint=valid[key]: _typed(v, hint), value, dotted, ctx)
    kwargs["hyper"] = FrozenMapping(hyper)
    return _checked(ModelConfig(**kwargs), prefix, ctx)


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenMapping({k: _freeze(v) for k, v in value.items()})
    return value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple, Sequence, typing.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_describe(inner[0])}" if len(inner) == 1 else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        type(None): "null",
    }
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _typed(value: Any, hint: Any) -> Any:
    """Check (best effort) and convert a hyperparameter against the model field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _freeze(value)
    if hint is type(None):
        if value is None:
            return None
        raise _expected("null", value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _typed(value, arg)
            except _Invalid:
                pass
        raise _expected(_describe(hint), value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Invalid(f"must be one of {', '.join(map(str, args))}; got {_show(value)}")
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _expected(_describe(hint), value)
        if not args:
            return _freeze(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _expected(f"a list of {len(args)} entries", value)
            item_hints = args
        else:
            item_hints = [args[0]] * len(value)
        items = []
        for k, (item, item_hint) in enumerate(zip(value, item_hints, strict=True)):
            try:
                items.append(_typed(item, item_hint))
            except _Invalid as err:
                raise _Invalid(f"entry {k}: {err}") from None
        return tuple(items)
    if hint is bool:
        return _bool(value)
    if hint is int:
        return _to_int(value)
    if hint is float:
        return _to_float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _expected("a string", value)
    return _freeze(value)  # a type we do not check


def _build(raw: Any, ctx: _Context) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ctx.error(None, f"the top level must be a mapping of options, got {_show(raw)}")
    return _parse_section(Config, raw, "", ctx)


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a (nested) mapping, e.g. from YAML, into a :class:`Config`; absent keys take
    their defaults.

    Raises:
        ConfigError: naming ``source`` and the dotted key.
    """
    return _build(d, _Context(source))


# ---------------------------------------------------------------------------------------------
# YAML input


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


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}invalid YAML: {problem}", source=source) from None


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _apply_overrides(raw: Any, overrides: Sequence[str]) -> tuple[Any, list[str]]:
    """``raw`` with ``key.path=value`` overrides set (values parsed as YAML); the keys set."""
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
        if not _KEY.fullmatch(key):
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
                    f"cannot set {key}: {section} is {_show(child)}, not a section",
                    source=COMMAND_LINE,
                    key=key,
                )
            node = child
        node[last] = value
        keys.append(key)
    return result, keys


def _thaw(value: Any) -> Any:
    """A deep copy with every mapping a dict (overrides write into it)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
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
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("no such file", source=source) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read: {err}", source=source) from None
        raw = _load_yaml(text, source)
    raw, cli_keys = _apply_overrides(raw, overrides)
    return _build(raw, _Context(source, cli_keys))


# ---------------------------------------------------------------------------------------------
# Output


def _plain(value: Any, *, one_or_many: bool = False) -> Any:
    if isinstance(value, tuple) and one_or_many and len(value) == 1:
        return value[0]
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _section_to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "section" in f.metadata:
            out[f.name] = _section_to_dict(value)
        elif f.metadata.get("hyper"):
            out.update(_plain(value))
        else:
            out[f.name] = _plain(value, one_or_many=f.metadata.get("one_or_many", False))
    return out


def config_to_dict(c: Config) -> dict[str, Any]:
    """``c`` as nested plain dicts, lists and scalars, as in the YAML file (model hyperparameters
    flattened into ``model``; one file is written as a string); ``config_from_dict`` inverts it."""
    return _section_to_dict(c)


_PLAIN_STRING = re.compile(r"[A-Za-z0-9_./+\-][A-Za-z0-9_./+\-=@ ]*")


def _yaml_value(value: Any) -> str:
    """One value in YAML flow style (lists inline), as read back by ``yaml.safe_load``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    if isinstance(value, str):
        if (
            _PLAIN_STRING.fullmatch(value)
            and not value.endswith(" ")
            and " #" not in value
            and yaml.safe_load(value) == value
        ):
            return value
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_yaml_value(str(k))}: {_yaml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _yaml_float(x: float) -> str:
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    if x == 0 or 1e-2 <= abs(x) < 1e6:
        return repr(float(x))  # always with a "." in this range
    for digits in range(17):
        text = f"{x:.{digits}e}"
        if float(text) == x:
            break
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent):+d}"  # YAML 1.1 needs the "." and the exponent's sign


def _emit(obj: Any, indent: int, comments: bool, lines: list[str]) -> None:
    pad = " " * indent

    def line(key: str, value: Any, doc: str) -> None:
        text = f"{pad}{key}: {_yaml_value(value)}"
        if comments and doc:
            text = f"{text.ljust(_COMMENT_COLUMN - 1)} # {doc}"
        lines.append(text)

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if "section" in f.metadata:
            if indent == 0:
                lines.append("")
            lines.append(f"{pad}{f.name}:")
            _emit(value, indent + 2, comments, lines)
        elif f.metadata.get("hyper"):
            if value == _DEFAULT_HYPER and obj.name == _DEFAULT_MODEL:
                doc = f.metadata.get("template_doc", doc)
            if not value and comments:
                lines.append(f"{pad}# {doc} (none set: the model's defaults)")
            for k, (key, item) in enumerate(value.items()):
                line(key, _plain(item), doc if k == 0 else "")
        else:
            line(f.name, _plain(value, one_or_many=f.metadata.get("one_or_many", False)), doc)


def dump_config(c: Config, *, comments: bool = True) -> str:
    """``c`` as YAML in the layout of :func:`template` (with its comments unless
    ``comments=False``); ``load_config`` reads it back to an equal ``Config``."""
    lines = [_HEADER] if comments else []
    _emit(c, 0, comments, lines)
    if not comments and lines and lines[0] == "":
        lines = lines[1:]
    return "\n".join(lines) + "\n"


def template() -> str:
    """The commented YAML template holding every option at its default."""
    return dump_config(Config())
