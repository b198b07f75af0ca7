"""The ``model`` section: the model's name, cutoff, dtype and repulsion, plus the chosen model
class's hyperparameters.

In the file the section is flat (``model: {name: schnet, cutoff: 5.0, features: 64}``); the
object keeps the hyperparameters apart in :attr:`ModelConfig.hyper`. Which keys are
hyperparameters, and their types, come from the dataclass fields of
:data:`jat.models.MODELS[name] <jat.models.MODELS>`; their ranges are checked by constructing that
class (the models check themselves, see :mod:`jat.models.hyper`). Validating a model section
therefore imports :mod:`jat.models` (and JAX); nothing else in :mod:`jat.config` does.

The default hyperparameters (``layers: 3, width: 32, heads: 1``) belong to the default model and
apply only while ``model.name`` is left at (or set to) that model; any other model starts from its
own defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationInfo, model_serializer, model_validator

from jat.config.values import (
    Bool,
    Choice,
    Float,
    FrozenMapping,
    Int,
    Invalid,
    Section,
    as_section_input,
    expected,
    freeze,
    plain,
    show,
    suggest,
    to_bool,
    to_float,
    to_int,
)

DEFAULT_MODEL = "jat"
DEFAULT_HYPER = FrozenMapping(layers=3, width=32, heads=1)
#: Validation context for a section read from a file: the hyperparameters are flat keys, and
#: ``hyper`` is not a key (a Python caller may pass ``ModelConfig(hyper={...})``).
_FILE_KEY = "jat.config.file"
FILE_CONTEXT = {_FILE_KEY: True}
#: Model-class fields that are not hyperparameters: set by Flax, or from data.species/model.cutoff.
NOT_HYPER = frozenset(
    {"parent", "name", "num_species", "cutoff", "readout_heads", "property_outputs"}
)
_SET_ELSEWHERE = {
    "num_species": " (the number of elements in data.species or in the data)",
    "readout_heads": " (set by model.ensemble: {kind: shallow, members: K})",
    "property_outputs": " (set by the targets of loss.properties)",
}


def model_classes() -> Mapping[str, type]:
    """The model registry, :data:`jat.models.MODELS` (imports JAX and Flax)."""
    from jat.models import MODELS

    return MODELS


def model_names() -> tuple[str, ...]:
    return tuple(model_classes())


def dtypes() -> tuple[str, ...]:
    from jat.dtypes import DTYPES

    return tuple(DTYPES)


def repulsions() -> tuple[str, ...]:
    from jat.models.repulsion import REPULSIONS

    return ("none", *REPULSIONS)


@functools.cache
def hyperparameters(cls: type) -> dict[str, Any]:
    """Hyperparameter name -> type hint of a model class (``Any`` where hints do not resolve)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    return {
        f.name: hints.get(f.name, Any)
        for f in dataclasses.fields(cls)
        if f.name not in NOT_HYPER and f.init
    }


def class_defaults(cls: type) -> dict[str, Any]:
    """The hyperparameters of a model class that have a plain default, with it."""
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.name in hyperparameters(cls) and f.default is not dataclasses.MISSING
    }


# ---------------------------------------------------------------------------------------------
# Hyperparameter values, checked against the model field's type hint


def describe(hint: Any) -> str:
    """A type hint in words, as messages use it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple, Sequence, typing.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {describe(inner[0])}" if len(inner) == 1 else "a list"
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


def typed(value: Any, hint: Any) -> Any:
    """``value`` checked (best effort) and converted for a field with type hint ``hint``; lists
    become tuples and mappings :class:`FrozenMapping` (Flax module attributes must hash)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return freeze(value)
    if hint is type(None):
        if value is None:
            return None
        raise expected("null", value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return typed(value, arg)
            except Invalid:
                pass
        raise expected(describe(hint), value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise Invalid(f"must be one of {', '.join(map(str, args))}; got {show(value)}")
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise expected(describe(hint), value)
        if not args:
            return freeze(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise expected(f"a list of {len(args)} entries", value)
            item_hints = args
        else:
            item_hints = [args[0]] * len(value)
        items = []
        for k, (item, item_hint) in enumerate(zip(value, item_hints, strict=True)):
            try:
                items.append(typed(item, item_hint))
            except Invalid as err:
                raise Invalid(f"entry {k}: {err}") from None
        return tuple(items)
    if hint is bool:
        return to_bool(value)
    if hint is int:
        return to_int(value)
    if hint is float:
        return to_float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise expected("a string", value)
    return freeze(value)  # a type we do not check


def _range_check(cls: type, cutoff: float, hyper: Mapping[str, Any]) -> None:
    """Construct the model class (cheap: no parameters) so that it checks its hyperparameters."""
    from jat.models import HyperparameterError

    try:
        cls(num_species=1, cutoff=cutoff, **hyper)
    except HyperparameterError as err:
        key, _, index = err.key.partition("[")
        if index:  # "readout[1]": an entry of a list
            raise Invalid(f"entry {index.rstrip(']')}: {err.message}", keys=(key,)) from None
        raise Invalid(err.message, keys=(key,)) from None
    except (TypeError, ValueError) as err:
        raise Invalid(f"rejected by {cls.__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------
# The section


ENSEMBLE_KINDS = ("deep", "shallow")


class EnsembleConfig(Section):
    """A committee trained in one run (members >= 2), saved as one potential whose predictions
    are the members' mean and whose uncertainty their σ. deep: K parameter sets with their own
    random initialisation, trained together by one compiled step on the same batches. shallow:
    one shared representation with K readout heads (the last readout layer has K outputs),
    trained on the heads' mean and on a scoring rule of their spread (``loss.ensemble``)."""

    kind: Annotated[str, Choice(ENSEMBLE_KINDS)] = Field(
        "deep",
        description="deep: K independent parameter sets of the model; shallow: one network "
        "with K readout heads, trained with loss.ensemble (nll or crps)",
    )
    members: Int(ge=1) = Field(1, description="committee size K (1: a single model)")
    bootstrap: Bool = Field(
        False,
        description="each member weights the training structures by its own bootstrap "
        "resample counts (drawn once per run from the seed; kind deep only)",
    )

    @model_validator(mode="after")
    def _bootstrap_needs_deep(self) -> EnsembleConfig:
        if self.bootstrap and self.kind == "shallow" and self.members > 1:
            raise Invalid(
                "bootstrap needs kind: deep (a shallow ensemble's heads share one "
                "representation and see the same structures)",
                keys=("bootstrap", "kind"),
            )
        return self


class ModelConfig(Section):
    """``hyper``: the model's hyperparameters given in the configuration (keyword arguments of
    ``jat.models.MODELS[name]``; the class supplies the rest). Lists are stored as tuples and
    mappings as :class:`FrozenMapping`."""

    name: Annotated[str, Choice(model_names)] = Field(
        DEFAULT_MODEL, description="the model class in jat.models"
    )
    cutoff: Float(gt=0) = Field(5.0, description="neighbour cutoff r_c (Å)")
    dtype: Annotated[str, Choice(dtypes)] = Field(
        "float32", description="precision of the model and of training"
    )
    repulsion: Annotated[str, Choice(repulsions)] = Field(
        "none", description="a fixed short-range (ZBL) repulsion, for stable MD"
    )
    repulsion_radii: Annotated[str, Choice(("data", "covalent"))] = Field(
        "data",
        description="ZBL ends at each pair's shortest training distance, or as below",
    )
    repulsion_radius_scale: Float(gt=0) = Field(
        0.8, description="covalent: off at this x (R_a + R_b) (also pairs absent from the data)"
    )
    ensemble: EnsembleConfig = Field(
        default_factory=EnsembleConfig, description="train a committee (members >= 2)"
    )
    hyper: FrozenMapping = Field(DEFAULT_HYPER, description="any hyperparameter of the model")

    @model_validator(mode="before")
    @classmethod
    def _split_hyperparameters(cls, data: Any, info: ValidationInfo) -> Any:
        """Name, common keys and typed hyperparameters from the flat section."""
        data = as_section_input(cls, data)
        if isinstance(data, ModelConfig):
            return data
        models = model_classes()
        try:
            name = Choice(tuple(models)).parse(data.get("name", DEFAULT_MODEL))
        except Invalid as err:
            raise Invalid(str(err), keys=("name",)) from None
        common = [key for key in cls.model_fields if key != "hyper"]
        valid = hyperparameters(models[name])
        from_file = bool(info.context and info.context.get(_FILE_KEY))
        hyper: dict[str, Any] = dict(DEFAULT_HYPER) if name == DEFAULT_MODEL else {}
        given = list(data.items())
        if "hyper" in data and not from_file:
            if not isinstance(data["hyper"], Mapping):
                raise Invalid(f"expected a mapping, got {show(data['hyper'])}", keys=("hyper",))
            hyper = {}
            given = [item for item in given if item[0] != "hyper"] + list(data["hyper"].items())
        out: dict[str, Any] = {}
        for key, value in given:
            if key in common:
                out[key] = value
            elif key in NOT_HYPER:
                raise Invalid(f"not a model setting{_SET_ELSEWHERE.get(key, '')}", keys=(key,))
            elif key not in valid:
                hint = suggest(key, [*common, *valid])
                raise Invalid(f"not a hyperparameter of model {name!r}; {hint}", keys=(key,))
            else:
                try:
                    hyper[key] = typed(value, valid[key])
                except Invalid as err:
                    raise Invalid(str(err), keys=(key,)) from None
        out["hyper"] = FrozenMapping(hyper)
        return out

    @model_validator(mode="after")
    def _check_ranges(self) -> ModelConfig:
        _range_check(model_classes()[self.name], self.cutoff, self.hyper)
        return self

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        data.update(data.pop("hyper"))
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        """The flat file form: common keys, and one branch per model (selected by ``name``)
        with its hyperparameters."""
        result = handler.resolve_ref_schema(super().__get_pydantic_json_schema__(schema, handler))
        result["properties"].pop("hyper", None)
        result.pop("additionalProperties", None)
        result["unevaluatedProperties"] = False
        result["description"] = (
            "The model: name, cutoff, dtype, repulsion, and any hyperparameter of the named "
            "class in jat.models (unset ones take the class defaults; for the default model "
            f"{DEFAULT_MODEL!r} the configuration's defaults are {dict(DEFAULT_HYPER)})."
        )
        result["oneOf"] = [_model_branch(name, model) for name, model in model_classes().items()]
        return result


def _hyper_schema(hint: Any) -> dict[str, Any]:
    try:
        schema = TypeAdapter(hint).json_schema()
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe: any value
        return {}
    return {} if "$defs" in schema or "$ref" in schema else schema


def _model_branch(name: str, cls: type) -> dict[str, Any]:
    defaults = class_defaults(cls)
    if name == DEFAULT_MODEL:
        defaults.update(DEFAULT_HYPER)
    properties: dict[str, Any] = {"name": {"const": name}}
    for key, hint in hyperparameters(cls).items():
        prop = {**_hyper_schema(hint), "description": f"{cls.__name__} hyperparameter"}
        if key in defaults:
            prop["default"] = plain(defaults[key])
        properties[key] = prop
    branch: dict[str, Any] = {"title": f"{name} ({cls.__name__})", "properties": properties}
    if name != DEFAULT_MODEL:
        branch["required"] = ["name"]
    return branch


__all__ = [
    "DEFAULT_HYPER",
    "DEFAULT_MODEL",
    "ENSEMBLE_KINDS",
    "FILE_CONTEXT",
    "EnsembleConfig",
    "NOT_HYPER",
    "ModelConfig",
    "class_defaults",
    "describe",
    "dtypes",
    "hyperparameters",
    "model_classes",
    "model_names",
    "repulsions",
    "typed",
]
