"""The tuning file: a base training configuration, a search space over its dotted keys, and how
the study runs. :func:`load_tune` reads and checks it (pydantic, unknown keys rejected) and checks
every search entry against the training configuration's schema by building a configuration with
its values, so that a bad space is a :class:`~jat.config.ConfigError` naming the file, the entry
and the problem before any training starts.

    base: ean.yaml                     # a training config (path relative to this file) or a mapping
    search:
      model.layers: {low: 2, high: 8}                     # int range (inferred from the bounds)
      model.width: {choices: [32, 48, 64]}
      model.cutoff: {low: 3.5, high: 5.0}                 # float range
      optimizer.lr_max: {low: 1.0e-3, high: 1.0e-2, log: true}
    trials: 20
    time_budget: 10m                   # training.time_budget of each trial
    pruner: median                     # median | halving | none
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jat.config import COMMAND_LINE, Config, ConfigError
from jat.config.parsing import Sources, apply_overrides, validate
from jat.config.values import Duration, flow, show, suggest
from jat.config.yaml_io import read_yaml, read_yaml_file

#: validation figures an objective may name (``val_`` prefix optional)
METRICS = (
    "forces_mae",
    "forces_rmse",
    "energy_atom_mae",
    "energy_atom_rmse",
    "energy_mae",
    "energy_rmse",
    "loss",
)
#: keys the tuner sets itself for every trial
RESERVED = ("run_dir", "name", "output_dir")
CATEGORICAL_TYPES = (type(None), bool, int, float, str)


def _number(value: Any, what: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no ".") as a string
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{what} must be a number, got {show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


class Param(BaseModel):
    """One search entry: ``choices`` (categorical) or a range ``low``..``high`` (inclusive),
    optionally on a ``log`` scale or in steps of ``step``; ``type`` int or float is inferred
    from the bounds (all integers: int) unless given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: list[Any] | None = None
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    type: Literal["int", "float"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"expected a mapping such as {{choices: [...]}} or {{low: 1, high: 4}}, got "
                f"{show(data)}"
            )
        return data

    @field_validator("log", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"log must be true or false, got {show(value)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.choices is not None:
            extra = [k for k in ("low", "high", "step", "type") if getattr(self, k) is not None]
            if self.log:
                extra.append("log")
            if extra:
                raise ValueError(f"choices cannot be combined with {', '.join(extra)}")
            if not self.choices:
                raise ValueError("choices is empty: give at least one value")
            for value in self.choices:
                if not isinstance(value, CATEGORICAL_TYPES):
                    raise ValueError(
                        f"choice {show(value)}: choices must be numbers, strings, booleans or "
                        "null"
                    )
            if len({(type(v), v) for v in self.choices}) != len(self.choices):
                raise ValueError(f"choices {flow(self.choices)} has a duplicate")
            return self
        if self.low is None or self.high is None:
            missing = " and ".join(k for k in ("low", "high") if getattr(self, k) is None)
            raise ValueError(
                f"{missing} missing: an entry is {{choices: [...]}} or {{low: ..., high: ...}}"
            )
        low, high = _number(self.low, "low"), _number(self.high, "high")
        step = _number(self.step, "step")
        kind = self.type
        if kind is None:
            ints = all(isinstance(v, int) for v in (low, high, step) if v is not None)
            kind = "int" if ints else "float"
        if kind == "int":
            for name, v in (("low", low), ("high", high), ("step", step)):
                if v is not None and v != int(v):
                    raise ValueError(f"type int needs integer bounds, got {name} = {v}")
            low, high = int(low), int(high)
            step = int(step) if step is not None else None
        else:
            low, high = float(low), float(high)
            step = float(step) if step is not None else None
        if low >= high:
            raise ValueError(f"low ({low}) must be less than high ({high})")
        if self.log and low <= 0:
            raise ValueError(f"a log scale needs low > 0, got low = {low}")
        if step is not None:
            if self.log:
                raise ValueError("log and step cannot be combined")
            if step <= 0:
                raise ValueError(f"step must be > 0, got {step}")
            if step > high - low:
                raise ValueError(f"step ({step}) is larger than high - low ({high - low})")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "type", kind)
        return self

    @property
    def kind(self) -> str:
        """``"categorical"``, ``"int"`` or ``"float"``."""
        return "categorical" if self.choices is not None else str(self.type)

    def examples(self) -> list[Any]:
        """The values a configuration is built with to check the entry: every choice, or the
        bounds."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: Any, name: str) -> Any:
        """A value for an Optuna ``trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {flow(self.choices)}"
        scale = ", log scale" if self.log else ""
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.type} in [{self.low}, {self.high}]{scale}{step}"


class TuneSettings(BaseModel):
    """The tuning file's options (``base`` and ``search`` resolved by :func:`load_tune`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | dict[str, Any] = Field(
        default_factory=dict,
        description="the training configuration: a path (relative to the tuning file) or a "
        "mapping as in a training config file",
    )
    search: dict[str, Param] = Field(description="dotted config key -> search entry")
    objective: str | None = Field(
        None,
        description="validation figure to optimise, e.g. forces_mae (null: the base config's "
        "monitored figure, training.monitor)",
    )
    direction: Literal["minimize", "maximize"] = "minimize"
    trials: int = Field(20, ge=1, description="trials in the study (resumed studies count theirs)")
    time_budget: Duration | None = Field(
        None, description="training.time_budget of each trial (null: the base config's)"
    )
    pruner: Literal["median", "halving", "none"] = "median"
    pruner_warmup: int = Field(
        0, ge=0, description="epochs before a trial may be pruned (halving: its minimum resource)"
    )
    startup_trials: int = Field(2, ge=0, description="median: trials that are never pruned")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0, description="seeds the sampler")
    study_dir: str | None = Field(
        None, description="where the study lives (null: studies/<tuning file name>)"
    )
    study_name: str | None = Field(None, description="null: the study directory's name")
    inference_repeats: int = Field(
        20, ge=1, description="timed energy+forces calls per trial for the inference cost"
    )

    @field_validator("search")
    @classmethod
    def _not_empty(cls, value: dict[str, Param]) -> dict[str, Param]:
        if not value:
            raise ValueError("the search space is empty: map dotted config keys to entries")
        return value

    @field_validator("objective")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value[4:] if value.startswith("val_") else value
        if name not in METRICS:
            raise ValueError(f"unknown objective {value!r}; {suggest(name, METRICS, 'valid')}")
        return name


class TuneSpec:
    """A checked tuning file: the settings, the base configuration (raw mapping and validated)
    and the resolved study directory and objective."""

    def __init__(
        self,
        settings: TuneSettings,
        source: str,
        base_raw: dict[str, Any],
        base_source: str,
        base_config: Config,
        study_dir: Path,
        cli_keys: Sequence[str] = (),
    ):
        from jat.training.trainer import monitor_key

        self.settings, self.source = settings, source
        self.base_raw, self.base_source, self.base_config = base_raw, base_source, base_config
        self.study_dir = study_dir
        self.study_name = settings.study_name or study_dir.resolve().name
        self.objective = settings.objective or monitor_key(base_config)
        self.search: dict[str, Param] = dict(settings.search)
        #: the tuning-file keys set on the command line (their errors blame it)
        self.cli_keys: tuple[str, ...] = tuple(cli_keys)

    @property
    def objective_column(self) -> str:
        return f"val_{self.objective}"

    def config(self, values: Mapping[str, Any], run_dir: str | os.PathLike | None = None,
               name: str | None = None) -> Config:
        """The training configuration with the search ``values`` set (and the run directory,
        name and per-trial time budget).

        Raises:
            ConfigError: for a value the training configuration rejects.
        """
        overrides = [f"{key}={flow(value)}" for key, value in values.items()]
        if run_dir is not None:
            overrides.append(f"run_dir={flow(str(run_dir))}")
        if name is not None:
            overrides.append(f"name={flow(name)}")
        if self.settings.time_budget is not None:
            overrides.append(f"training.time_budget={flow(self.settings.time_budget)}")
        raw, keys = apply_overrides(copy.deepcopy(self.base_raw), overrides)
        return validate(raw, Sources(self.base_source, keys))

    def check(self) -> None:
        """Build a configuration with each value of each entry (every choice, both bounds).

        Raises:
            ConfigError: naming the tuning file and ``search.<key>``.
        """
        for key, param in self.search.items():
            entry = f"search.{key}"
            if key in RESERVED:
                raise ConfigError(f"{key} is set by the tuner for each trial", source=self.source,
                                  key=entry)
            if key == "training.time_budget" and self.settings.time_budget is not None:
                raise ConfigError(
                    "time_budget sets the trials' training.time_budget: remove one of the two",
                    source=self.source, key=entry,
                )
            source = COMMAND_LINE if any(
                entry == k or entry.startswith(k + ".") or k.startswith(entry + ".")
                for k in self.cli_keys
            ) else self.source
            for value in param.examples():
                error = self._try(key, value)
                if error is not None:
                    where = "" if error.key in (None, key) else f" ({error.key})"
                    raise ConfigError(
                        f"with {key} = {flow(value)}{where}: {error.message}",
                        source=source,
                        key=entry,
                    )

    def _try(self, key: str, value: Any) -> ConfigError | None:
        """None if ``key = value`` makes a valid configuration with the base values of the other
        entries, or with one other entry at one of its values (e.g. model.heads = 3 with a
        searched model.width = 12); else the error with the base values."""
        try:
            self.config({key: value})
            return None
        except ConfigError as err:
            first = err
        for other, param in self.search.items():
            if other == key:
                continue
            for example in param.examples():
                try:
                    self.config({key: value, other: example})
                    return None
                except ConfigError:
                    pass
        return first


def _translate(err: ValidationError, source: str) -> ConfigError:
    detail = err.errors(include_url=False)[0]
    loc = [str(part) for part in detail["loc"]]
    if detail["type"] == "extra_forbidden":
        valid = TuneSettings.model_fields if len(loc) == 1 else Param.model_fields
        return ConfigError(f"unknown key; {suggest(loc[-1], valid)}", source=source,
                           key=".".join(loc))
    if detail["type"] == "missing":
        return ConfigError("missing", source=source, key=".".join(loc))
    cause = (detail.get("ctx") or {}).get("error")
    message = str(cause) if isinstance(cause, ValueError) else detail["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return ConfigError(message, source=source, key=".".join(loc) or None)


def _split_overrides(
    raw: dict[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The tuning mapping with its overrides set, the ``base.`` overrides (for the training
    configuration, prefix removed) and the keys set on the command line."""
    base_overrides: list[str] = []
    keys: list[str] = []
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep:
            apply_overrides(raw, [override])  # raises the usual error
        if key.startswith("base."):
            base_overrides.append(f"{key[5:]}={text}")
            keys.append(key)
            continue
        if key.startswith("search.") and isinstance(raw.get("search"), dict):
            rest = key[7:]
            search = raw["search"]
            entry = next((k for k in search if rest.startswith(k + ".")), None)
            if entry is not None and isinstance(search[entry], dict):
                field = rest[len(entry) + 1 :]
                search[entry], _ = apply_overrides(search[entry], [f"{field}={text}"])
            else:  # a whole entry, e.g. search.model.width={choices: [16, 32]}
                parsed, _ = apply_overrides({}, [f"value={text}"])
                search[rest] = parsed["value"]
            keys.append(key)
            continue
        raw, set_keys = apply_overrides(raw, [override])
        keys.extend(set_keys)
    return raw, base_overrides, keys


def load_tune(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TuneSpec:
    """Read, check and resolve a tuning file plus ``key=value`` overrides (``trials=20``,
    ``base.training.epochs=5``, ``search.model.layers.high=6``).

    Raises:
        ConfigError: naming the file (or "command line"), the entry and the problem.
    """
    source = str(path)
    raw = read_yaml_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the top level must be a mapping, got {show(raw)}", source=source)
    raw, base_overrides, cli_keys = _split_overrides(copy.deepcopy(dict(raw)), overrides)
    blame = COMMAND_LINE if cli_keys else source
    try:
        settings = TuneSettings.model_validate(raw)
    except ValidationError as err:
        error = _translate(err, source)
        if error.key and any(error.key.startswith(k) or k.startswith(error.key)
                             for k in cli_keys):
            error = ConfigError(error.message, source=blame, key=error.key)
        raise error from None

    if isinstance(settings.base, str):
        base_path = Path(os.path.expandvars(os.path.expanduser(settings.base)))
        if not base_path.is_absolute():
            base_path = Path(path).parent / base_path
        base_source = str(base_path)
        try:
            base_text = base_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"no such file {base_source}", source=source, key="base") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {base_source}: {err}", source=source,
                              key="base") from None
        base_raw = read_yaml(base_text, base_source)
    else:
        base_raw, base_source = settings.base, f"{source} (base)"
    base_raw = {} if base_raw is None else base_raw
    base_raw, base_keys = apply_overrides(copy.deepcopy(base_raw), base_overrides)
    base_config = validate(base_raw, Sources(base_source, base_keys))
    study_dir = Path(settings.study_dir or Path("studies") / Path(path).stem)
    spec = TuneSpec(settings, source, base_raw, base_source, base_config, study_dir, cli_keys)
    spec.check()
    return spec


__all__ = ["METRICS", "Param", "TuneSettings", "TuneSpec", "load_tune"]
