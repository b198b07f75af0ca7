"""Building blocks of the configuration schema.

Value types (``Int(gt=0)``, ``Files``, ``Choice(...)``, ...) read a YAML value the way jat
documents it and describe it in JSON Schema; their parsers raise :class:`Invalid` with jat's
messages ("expected an integer, got 'abc'", "must be > 0; got 0"), which the parsing layer turns
into a :class:`~jat.config.ConfigError` naming the source and the dotted key. :class:`Section` is
the base of every section model (frozen, unknown keys forbidden). :class:`FrozenMapping` holds
model hyperparameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from annotated_types import Interval
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import core_schema


class Invalid(ValueError):
    """A bad value or combination of values. ``keys`` name the options involved, relative to the
    section whose validator raises it (empty: the value or section being validated)."""

    def __init__(self, message: str, keys: Sequence[str] = ()):
        super().__init__(message)
        self.keys = tuple(keys)


# ---------------------------------------------------------------------------------------------
# Showing values in messages and in YAML


def show(value: Any) -> str:
    """``value`` as a message quotes it: strings quoted, YAML spellings for null and booleans."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list {flow(value)}" if len(value) < 8 else "a list"
    return repr(value)


_PLAIN_STRING = re.compile(r"[A-Za-z0-9_./+\-][A-Za-z0-9_./+\-=@ ]*")


def flow(value: Any) -> str:
    """One value in YAML flow style (lists inline), read back equal by ``yaml.safe_load``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _flow_float(value)
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
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{flow(str(k))}: {flow(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _flow_float(x: float) -> str:
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


def suggest(name: str, valid: Iterable[str], what: str = "valid keys") -> str:
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


# ---------------------------------------------------------------------------------------------
# Scalars


def expected(what: str, value: Any) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


def to_int(value: Any) -> int:
    """An int from an int or an integral float; booleans and strings are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise expected("an integer", value)


def to_float(value: Any) -> float:
    """A finite float from a number or a numeric string (YAML 1.1 reads ``3e-3`` as a string)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise expected("a number", value) from None
    else:
        raise expected("a number", value)
    if not math.isfinite(result):
        raise Invalid(f"must be finite; got {show(value)}")
    return result


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise expected("true or false", value)


def _check_bounds(result: float, bounds: Interval) -> None:
    tests = (
        (bounds.gt, ">", lambda b: result > b),
        (bounds.ge, ">=", lambda b: result >= b),
        (bounds.lt, "<", lambda b: result < b),
        (bounds.le, "<=", lambda b: result <= b),
    )
    if not all(bound is None or ok(bound) for bound, _, ok in tests):
        condition = " and ".join(f"{op} {bound}" for bound, op, _ in tests if bound is not None)
        raise Invalid(f"must be {condition}; got {result!r}")


def Int(*, gt: int | None = None, ge: int | None = None) -> Any:  # noqa: N802 - a type
    """An integer (an integral float is accepted) within the bounds."""
    bounds = Interval(gt=gt, ge=ge)

    def parse(value: Any) -> int:
        result = to_int(value)
        _check_bounds(result, bounds)
        return result

    return Annotated[int, bounds, BeforeValidator(parse)]


def Float(  # noqa: N802 - a type
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A finite number within the bounds (stored as float)."""
    bounds = Interval(gt=gt, ge=ge, lt=lt, le=le)

    def parse(value: Any) -> float:
        result = to_float(value)
        _check_bounds(result, bounds)
        return result

    return Annotated[float, bounds, BeforeValidator(parse)]


Bool = Annotated[bool, BeforeValidator(to_bool)]


def _text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise expected("a string", value)
    if not value.strip():
        raise Invalid("must not be empty")
    return value


#: A non-empty string; a number is read as its text (``name: 2024``).
Text = Annotated[str, BeforeValidator(_text), WithJsonSchema({"type": "string", "minLength": 1})]


def _run_name(value: Any) -> str:
    result = _text(value)
    if "/" in result or "\\" in result or result in (".", ".."):
        raise Invalid(f"must be a plain name (it names a directory); got {result!r}")
    return result


RunName = Annotated[
    str,
    BeforeValidator(_run_name),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": r"^[^/\\]+$"}),
]


def _path(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise expected("a file name", value)
    if not value.strip():
        raise Invalid("must not be empty")
    return value


FilePath = Annotated[
    str, BeforeValidator(_path), WithJsonSchema({"type": "string", "minLength": 1})
]


class Choice:
    """Annotation: one of ``choices`` (a tuple, or a function giving them when first needed, for
    registries that import JAX); ``null_as``: the choice a YAML null stands for."""

    def __init__(
        self, choices: Sequence[str] | Callable[[], Sequence[str]], null_as: str | None = None
    ):
        self._choices = choices
        self.null_as = null_as

    @property
    def choices(self) -> tuple[str, ...]:
        choices = self._choices() if callable(self._choices) else self._choices
        return tuple(choices)

    def parse(self, value: Any) -> str:
        if value is None and self.null_as is not None:
            return self.null_as
        choices = self.choices
        if isinstance(value, str) and value in choices:
            return value
        message = f"must be one of {', '.join(choices)}; got {show(value)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, choices, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else ""
        raise Invalid(message)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.parse, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        choices: list[Any] = list(self.choices)
        return {"enum": choices + [None] if self.null_as is not None else choices}


def choices_of(info: FieldInfo) -> tuple[str, ...] | None:
    """The choices of a :class:`Choice` field, ``None`` for any other field."""
    for meta in info.metadata:
        if isinstance(meta, Choice):
            return meta.choices
    return None


# ---------------------------------------------------------------------------------------------
# Lists, formulas, amounts, durations


def _str_list(
    value: Any, item: Callable[[Any], str], *, single: bool, what: str
) -> tuple[str, ...]:
    """A list of strings as a tuple; ``single``: a lone string is a list of one."""
    if isinstance(value, str) and single:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise expected(what, value)
    items = []
    for k, entry in enumerate(value):
        try:
            items.append(item(entry))
        except Invalid as err:
            raise Invalid(f"entry {k}: {err}") from None
    return tuple(items)


def _files(value: Any) -> tuple[str, ...]:
    result = _str_list(value, _path, single=True, what="a file name or a list of file names")
    if not result:
        raise Invalid("expected at least one file")
    return result


def _one_or_many(value: tuple[str, ...]) -> str | list[str]:
    return value[0] if len(value) == 1 else list(value)


#: A file or a list of files, stored as a tuple; written back as a string when there is one.
Files = Annotated[
    tuple[str, ...],
    BeforeValidator(_files),
    PlainSerializer(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ]
        }
    ),
]

ELEMENTS = tuple(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se
    Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy
    Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf
    Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split()
)
_ELEMENT_SET = frozenset(ELEMENTS)


def _element(value: Any) -> str:
    if not isinstance(value, str):
        raise expected("an element symbol", value)
    if value not in _ELEMENT_SET:
        close = difflib.get_close_matches(value.capitalize(), sorted(_ELEMENT_SET), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise Invalid(f"{value!r} is not an element symbol{hint}")
    return value


def _species(value: Any) -> tuple[str, ...]:
    result = _str_list(value, _element, single=False, what="a list of element symbols")
    if not result:
        raise Invalid("expected at least one element")
    repeated = sorted({s for s in result if result.count(s) > 1})
    if repeated:
        raise Invalid(f"repeated element(s) {', '.join(repeated)}")
    return result


#: Distinct element symbols, e.g. ``[H, C, N, O]``.
Species = Annotated[
    tuple[str, ...],
    BeforeValidator(_species),
    WithJsonSchema(
        {"type": "array", "items": {"enum": list(ELEMENTS)}, "minItems": 1, "uniqueItems": True}
    ),
]


def _symbols_in(text: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, text):
        raise Invalid(f"{text!r} is not {what}")
    for symbol in re.findall(r"[A-Z][a-z]?", text):
        if symbol not in _ELEMENT_SET:
            raise Invalid(f"{text!r}: {symbol!r} is not an element symbol")
    return text


_UNIT = r"(?:[A-Z][a-z]?)+"
_FORMULA = r"(?:[A-Z][a-z]?\d*)+"


def _unit(value: Any) -> str:
    if not isinstance(value, str):
        raise expected("a string of element symbols", value)
    return _symbols_in(value, _UNIT, "a sequence of element symbols")


def _formula(value: Any) -> str:
    if not isinstance(value, str):
        raise expected("a chemical formula", value)
    return _symbols_in(value, _FORMULA, "a chemical formula (e.g. C2H6)")


#: Repeating units, each written as its atoms in order, e.g. ``[NHHHCHHCHHH, NOOO]``.
Units = Annotated[
    tuple[str, ...],
    BeforeValidator(lambda v: _str_list(v, _unit, single=False, what="a list of repeating units")),
    WithJsonSchema({"type": "array", "items": {"type": "string", "pattern": f"^{_UNIT}$"}}),
]

#: Chemical formulas (a lone formula is a list of one), e.g. ``[C2H6]``.
Formulas = Annotated[
    tuple[str, ...],
    BeforeValidator(lambda v: _str_list(v, _formula, single=True, what="a list of formulas")),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": f"^{_FORMULA}$"},
                {"type": "array", "items": {"type": "string", "pattern": f"^{_FORMULA}$"}},
            ]
        }
    ),
]


def _amount(value: Any) -> float | int:
    result = to_float(value)
    if result < 0:
        raise Invalid(f"must be >= 0; got {show(value)}")
    if result < 1:
        return result
    if not result.is_integer():
        raise Invalid(f"a fraction must be < 1 and a number a whole number; got {show(value)}")
    return int(result)


def _amount_or_rest(value: Any) -> float | int | str:
    if isinstance(value, str) and value.strip().lower() == "rest":
        return "rest"
    return _amount(value)


#: The JSON schema alternatives of an :data:`Amount`: a fraction or a count.
AMOUNT_SCHEMA = [
    {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": 1},
]

#: An :data:`Amount`, or "rest": whatever the other sets leave.
AmountOrRest = Annotated[
    Any,
    BeforeValidator(_amount_or_rest),
    WithJsonSchema({"anyOf": [*AMOUNT_SCHEMA, {"const": "rest"}]}),
]


#: A fraction (0 <= x < 1, stored as float) or a count (a whole number >= 1, stored as int).
Amount = Annotated[Any, BeforeValidator(_amount), WithJsonSchema({"anyOf": AMOUNT_SCHEMA})]


def _devices(value: Any) -> str | int:
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise expected('"auto" or a number of devices >= 1', value) from None
    try:
        result = to_int(value)
    except Invalid:
        raise expected('"auto" or a number of devices >= 1', value) from None
    if result < 1:
        raise Invalid(f'must be "auto" or >= 1; got {show(value)}')
    return result


#: ``"auto"`` (every local device) or a number of devices >= 1.
Devices = Annotated[
    Any,
    BeforeValidator(_devices),
    WithJsonSchema({"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]}),
]

_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([dhms])"
_DURATION_PATTERN = rf"^\s*(?:(?:\d+(?:\.\d*)?|\.\d+)|(?:{_DURATION_PART}\s*)+)\s*$"


def parse_duration(value: float | int | str) -> float:
    """Seconds in a duration: a number of seconds (``90``, ``"90"``) or a string of parts with units
    d, h, m, s (``"90s"``, ``"20m"``, ``"1.5h"``, ``"1h30m"``, ``"1h 30m 15s"``).

    Raises:
        ValueError: for anything else, a negative or non-finite value or a repeated unit.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration, got {show(value)}")
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


def _duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise Invalid(str(err)) from None
    if seconds <= 0:
        raise Invalid(f"must be > 0; got {show(value)}")
    return seconds


#: A positive duration, stored as float seconds: a number of seconds or e.g. "20m", "1h30m".
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION_PATTERN},
            ]
        }
    ),
]


# ---------------------------------------------------------------------------------------------
# Mappings and sections


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts, for YAML and JSON."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


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

    @classmethod
    def _validate(cls, value: Any) -> FrozenMapping:
        if isinstance(value, FrozenMapping):
            return value
        if isinstance(value, Mapping):
            return freeze(value)
        raise expected("a mapping", value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(plain)
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "object"}


def freeze(value: Any) -> Any:
    """``value`` with lists as tuples and mappings as :class:`FrozenMapping` (hashable)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenMapping({k: freeze(v) for k, v in value.items()})
    return value


def as_section_input(cls: type, data: Any) -> Any:
    """What a section's validator reads: ``None`` (a section with every line commented out) is
    empty, an instance stays as it is, a mapping becomes a dict with string keys."""
    if data is None:
        return {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise Invalid(f"expected a mapping of options, got {show(data)}")
    for key in data:
        if not isinstance(key, str):
            raise Invalid(f"keys must be strings, got {show(key)}")
    return dict(data)


class Section(BaseModel):
    """A section of the configuration: immutable, hashable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _read_section(cls, data: Any) -> Any:
        return as_section_input(cls, data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


__all__ = [
    "ELEMENTS",
    "Amount",
    "AmountOrRest",
    "Bool",
    "Choice",
    "Devices",
    "Duration",
    "FilePath",
    "Files",
    "Float",
    "Formulas",
    "FrozenMapping",
    "Int",
    "Invalid",
    "RunName",
    "Section",
    "Species",
    "Text",
    "Units",
    "as_section_input",
    "choices_of",
    "expected",
    "flow",
    "freeze",
    "parse_duration",
    "plain",
    "show",
    "suggest",
    "to_bool",
    "to_float",
    "to_int",
]
