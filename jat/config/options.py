"""The sections of the training configuration: every option with its type and bounds, its
default and its description (the template's comment), in one place.

Choice lists that jat keeps elsewhere come from their registries: reader formats from
:data:`jat.data.readers.FORMATS`, models, dtypes and repulsion kinds in
:mod:`jat.config.model_section`.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any

from pydantic import Field, model_validator

from jat.config.model_section import ModelConfig
from jat.config.values import (
    Amount,
    AmountOrRest,
    Bool,
    Choice,
    Devices,
    Duration,
    FilePath,
    Files,
    Float,
    Formulas,
    Int,
    Invalid,
    RunName,
    Section,
    Species,
    Text,
    Units,
    show,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The modes of :class:`jat.training.progress.Progress`.
PROGRESS_MODES = ("auto", "bar", "lines", "none")


def formats() -> tuple[str, ...]:
    """``auto`` and the reader formats of :data:`jat.data.readers.FORMATS`."""
    from jat.data.readers import FORMATS

    return ("auto", *FORMATS)


class Ani1Config(Section):
    """Options of the ANI-1 reader."""

    fraction: Float(gt=0, le=1) = Field(
        1.0, description="fraction of each molecule's conformations drawn (the thesis used 0.05)"
    )
    high_energy: Bool = Field(
        False, description="also read the high-energy conformations (coordinatesHE)"
    )


class Qm9Config(Section):
    """Options of the QM9 reader."""

    exclude: FilePath | None = Field(
        None,
        description="molecules left out: the distribution's uncharacterized.txt (3 054 failing "
        "its geometry check); null = none",
    )


class SplitConfig(Section):
    """How the training files are split into training, validation and test sets."""

    by: Annotated[str, Choice(("configuration", "molecule", "auto"))] = Field(
        "auto", description="auto: molecule for ANI-1, else configuration"
    )
    validation: Amount = Field(
        0.1, description="fraction (< 1) or number (>= 1) of structures for validation"
    )
    test: AmountOrRest = Field(
        0.0,
        description="fraction or number held out for testing; by molecule: of whole molecules; "
        "rest (with n_train): every structure left after validation and the n_train training "
        "structures, e.g. QM9's 110 000 / 10 000 / rest",
    )
    n_train: Int(gt=0) | None = Field(
        None, description="cap on the number of training structures after the split"
    )
    exclude_formulas: Formulas = Field(
        (),
        description="formulas (e.g. [C2H6]) kept out of training, evaluated as out-of-sample",
    )
    kfold: Int(ge=2) | None = Field(
        None,
        description="k-fold cross-validation: k runs, each validating on one fold (instead "
        "of `validation`); the k models form a committee",
    )
    fold: Int(ge=0) | None = Field(
        None, description="with kfold: train only the run validating on this fold (from 0)"
    )

    @model_validator(mode="after")
    def _folds(self) -> SplitConfig:
        if self.fold is not None and self.kfold is None:
            raise Invalid("needs split.kfold (the number of folds)", keys=("fold",))
        if self.fold is not None and self.fold >= self.kfold:
            raise Invalid(
                f"fold {self.fold} does not exist with kfold={self.kfold} (folds 0 to "
                f"{self.kfold - 1})",
                keys=("fold",),
            )
        return self

    @model_validator(mode="after")
    def _rest_to_test(self) -> SplitConfig:
        if self.test != "rest":
            return self
        if self.n_train is None:
            raise Invalid("test: rest needs split.n_train (the training set's size)",
                          keys=("test", "n_train"))
        if self.by == "molecule" or self.kfold is not None:
            raise Invalid("test: rest splits by configuration, without kfold",
                          keys=("test",))
        return self

    @model_validator(mode="after")
    def _fractions_leave_training(self) -> SplitConfig:
        v, t = self.validation, self.test
        if t == "rest":
            return self
        if 0 < v < 1 and 0 < t < 1 and v + t >= 1:
            raise Invalid(
                f"validation and test fractions add up to {v + t:g}; nothing is left for training",
                keys=("validation", "test"),
            )
        return self


class DataConfig(Section):
    """The reference data: files, reader, species and split."""

    train: Files = Field(
        ("builtin",),
        description='file or list of files; "builtin" = the EAN GFN2-xTB set shipped with jat',
    )
    validation: Files | None = Field(
        None, description="optional separate file(s); null = split off the training files"
    )
    test: Files | None = Field(
        None, description="optional separate file(s) for a final test evaluation"
    )
    format: Annotated[str, Choice(formats)] = Field(
        "auto", description="reader of the files; auto: by file extension"
    )
    species: Species | None = Field(
        None, description="element symbols, e.g. [H, C, N, O]; null = every element in the data"
    )
    composition: Units | None = Field(
        None,
        description="neuralil format only: repeating units, e.g. [NHHHCHHCHHH, NOOO]; null = EAN",
    )
    ani1: Ani1Config = Field(default_factory=Ani1Config)
    qm9: Qm9Config = Field(default_factory=Qm9Config)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _composition_for_neuralil(self) -> DataConfig:
        if self.composition is not None and self.format not in ("auto", "neuralil"):
            raise Invalid(
                f"only used by the neuralil format, not {self.format!r}", keys=("composition",)
            )
        if self.composition is not None and not self.composition:
            raise Invalid(
                "expected at least one repeating unit (null = EAN)", keys=("composition",)
            )
        return self


#: from this many structures (all sets together) ``neighbor_lists: auto`` builds per batch
PER_BATCH_FROM = 100_000
#: the kinds of property targets (:data:`jat.properties.KINDS`)
PROPERTY_KINDS = ("extensive", "intensive", "dipole", "atomic")
#: names of the energy and force figures, which a property target's key may not take
RESERVED_KEYS = ("energy", "energy_atom", "forces", "loss", "weight", "finite")
#: the fixed choices of training.monitor (besides <key>_mae of a property target)
MONITORS = ("auto", "forces_mae", "energy_mae", "loss")


class PropertyTargetConfig(Section):
    """One property target of the loss: a key of the structures' properties, how the network
    forms it, and its log-cosh term."""

    key: Text = Field(
        description="the property's name in the data (QM9: A, B, C, mu, alpha, homo, lumo, "
        "gap, r2, zpve, U0, U, H, G, Cv, mulliken_charges)",
    )
    kind: Annotated[str, Choice(PROPERTY_KINDS)] = Field(
        description="extensive: sum of atomic contributions plus a per-species reference; "
        "intensive: mean over atoms; dipole: μ = Σ q_i (r_i − centroid) + Σ μ_i, compared as "
        "|μ| with the label (e·Å); atomic: one value per atom",
    )
    weight: Float(ge=0) = Field(1.0, description="weight of the target's log-cosh term")
    alpha: Float(gt=0) = Field(
        0.01, description="log-cosh scale α in the target's unit (per structure; per atom "
        "for atomic targets)"
    )


class LossConfig(Section):
    """The training loss: log-cosh of force components, of the energy per atom and of any
    property targets."""

    forces_weight: Float(ge=0) = Field(1.0, description="weight of the force term")
    energy_weight: Float(ge=0) = Field(0.0, description="weight ρ of the energy-per-atom term")
    forces_alpha: Float(gt=0) = Field(
        0.1, description="log-cosh scale α of force components (eV/Å)"
    )
    energy_alpha: Float(gt=0) = Field(
        0.01, description="log-cosh scale α of the energy per atom (eV/atom)"
    )
    ensemble: Annotated[str, Choice(("nll", "crps"))] = Field(
        "nll",
        description="model.ensemble kind shallow: the score of the heads' spread added to the "
        "loss of their mean, per energy per atom and force component: nll (Gaussian negative "
        "log-likelihood) or crps (Gaussian continuous ranked probability score)",
    )
    ensemble_weight: Float(ge=0) = Field(
        1.0, description="weight of the shallow ensemble's score relative to the loss of the mean"
    )
    properties: tuple[PropertyTargetConfig, ...] = Field(
        (),
        description="property targets, e.g. [{key: mu, kind: dipole, alpha: 0.01}, "
        "{key: gap, kind: intensive, weight: 1, alpha: 0.05}]",
    )

    @model_validator(mode="after")
    def _something_trained(self) -> LossConfig:
        trained = any(t.weight > 0 for t in self.properties)
        if self.forces_weight == 0 and self.energy_weight == 0 and not trained:
            raise Invalid(
                "forces_weight and energy_weight are both 0 and no property target has a "
                "weight; nothing would be trained",
                keys=("forces_weight", "energy_weight"),
            )
        return self

    @model_validator(mode="after")
    def _distinct_targets(self) -> LossConfig:
        seen: dict[str, int] = {}
        for k, t in enumerate(self.properties):
            if t.key in RESERVED_KEYS:
                raise Invalid(
                    f"entry {k}: key {t.key!r} is the name of a figure of jat's own; reserved: "
                    f"{', '.join(RESERVED_KEYS)}",
                    keys=(f"properties.{k}.key",),
                )
            if t.key in seen:
                raise Invalid(
                    f"entry {k}: key {t.key!r} is already the target of entry {seen[t.key]}",
                    keys=(f"properties.{k}.key",),
                )
            seen[t.key] = k
        return self


class OptimizerConfig(Section):
    """The optimiser, the learning-rate schedule, clipping and the parameter average."""

    name: Annotated[str, Choice(("adam", "adamw"))] = Field(
        "adam", description="adamw: with decoupled weight decay"
    )
    schedule: Annotated[str, Choice(("onecycle", "constant"))] = Field(
        "onecycle", description="learning-rate schedule (constant uses lr_max)"
    )
    lr_min: Float(gt=0) = Field(
        5.0e-4, description="one-cycle: start, reached again at 90 % of the steps"
    )
    lr_max: Float(gt=0) = Field(3.0e-3, description="one-cycle: peak at 45 % of the steps")
    lr_final: Float(gt=0) = Field(5.0e-6, description="one-cycle: value at the last step")
    per_epoch: Bool = Field(
        False, description="restart the cycle every epoch (the original code's behaviour)"
    )
    weight_decay: Float(ge=0) = Field(0.0, description="decoupled weight decay (adamw only)")
    clip_norm: Float(gt=0) | None = Field(
        10.0, description="clip the global gradient norm; null = no clipping"
    )
    ema_decay: Float(ge=0, lt=1) | None = Field(
        0.99, description="exponential moving average of the parameters; null = off"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerConfig:
        if self.weight_decay > 0 and self.name != "adamw":
            raise Invalid(
                f"weight_decay = {self.weight_decay:g} needs optimizer.name: adamw "
                f"(got {self.name!r})",
                keys=("weight_decay", "name"),
            )
        if self.schedule == "onecycle":
            for low in ("lr_min", "lr_final"):
                if getattr(self, low) > self.lr_max:
                    raise Invalid(
                        f"{low} = {getattr(self, low):g} exceeds the one-cycle peak "
                        f"lr_max = {self.lr_max:g}",
                        keys=(low, "lr_max"),
                    )
        return self


class TrainingConfig(Section):
    """Epochs, batches, the time budget, early stopping and checkpoints."""

    epochs: Int(gt=0) = Field(
        200, description="number of epochs (an upper bound when time_budget is set)"
    )
    batch_size: Int(gt=0) = Field(
        8,
        description="structures per training step over all devices (the global batch; a "
        "multiple of the device count; the learning rate is not rescaled)",
    )
    eval_batch_size: Int(gt=0) | None = Field(
        None,
        description="structures per evaluation step; null = batch_size (rounded up to a "
        "multiple of the device count)",
    )
    devices: Devices = Field(
        "auto",
        description="devices per process that share each batch: auto = every local device, "
        "or a number; batches are split by structure",
    )
    time_budget: Duration | None = Field(
        None, description="wall-clock budget for the whole run; the schedule is fitted to it"
    )
    patience: Int(gt=0) | None = Field(
        None, description="stop after this many epochs without a better validation score"
    )
    monitor: Text = Field(
        "auto",
        description="score of the best model: auto, forces_mae, energy_mae, loss, or <key>_mae "
        "of a property target (e.g. mu_mae); auto: forces_mae if forces are trained, else "
        "energy_mae if energies are, else the first property target's MAE",
    )
    eval_every: Int(gt=0) = Field(1, description="validate every this many epochs")
    max_buckets: Int(gt=0) = Field(
        4, description="maximum number of static batch shapes (compilations)"
    )
    neighbor_lists: Annotated[str, Choice(("auto", "stored", "per_batch"))] = Field(
        "auto",
        description="stored: every structure's neighbour list built once and kept on the host; "
        "per_batch: only compact rows kept (positions and forces in model.dtype, no edges), "
        "each batch's lists built on the device; auto: per_batch from "
        f"{PER_BATCH_FROM} structures (all sets), else stored",
    )
    prefetch: Int(ge=0) = Field(
        2,
        description="batches made ahead of the step in a background thread (their host "
        "gather and transfer to the device overlap the steps before); 0: each made in the loop",
    )
    energy_reference: Annotated[str, Choice(("fit", "none"), null_as="none")] = Field(
        "fit", description="fit: per-species shift by least squares on element counts"
    )
    checkpoint_every: Int(gt=0) = Field(
        1, description='write the "last" checkpoint every this many epochs'
    )


class LoggingConfig(Section):
    """Terminal progress and Weights & Biases."""

    progress: Annotated[str, Choice(PROGRESS_MODES, null_as="none")] = Field(
        "auto", description="auto: a bar on a terminal, lines otherwise"
    )
    wandb: Bool = Field(False, description="log to Weights & Biases")
    wandb_project: Text = Field("jat", description="Weights & Biases project")
    wandb_mode: Annotated[str, Choice(("offline", "online"))] = Field(
        "offline", description="offline needs no network or account"
    )


class Config(Section):
    """A jat training configuration. Units: Å, eV, eV/Å. Durations: seconds or "20m", "1.5h"."""

    name: RunName = Field(
        "jat",
        description="run name; the run directory is <output_dir>/<name>-<YYYYmmdd-HHMMSS> "
        "unless run_dir is set",
    )
    run_dir: FilePath | None = Field(
        None, description="explicit run directory (null: made from output_dir and name)"
    )
    output_dir: FilePath = Field("runs", description="parent directory of new run directories")
    seed: Int(ge=0) = Field(
        0, description="seeds the split, the shuffling and the initial parameters"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    # The default is not validated, so that Config() does not import JAX (see model_section).
    model: ModelConfig = Field(default_factory=ModelConfig.model_construct)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _monitored_figure(self) -> Config:
        monitor = self.training.monitor
        targets = tuple(f"{t.key}_mae" for t in self.loss.properties)
        choices = MONITORS + targets
        if monitor not in choices:
            message = f"must be one of {', '.join(choices)}; got {show(monitor)}"
            close = difflib.get_close_matches(monitor, choices, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else ""
            raise Invalid(message, keys=("training.monitor",))
        return self

    @model_validator(mode="after")
    def _shallow_without_kfold(self) -> Config:
        ensemble = getattr(self.model, "ensemble", None)
        shallow = ensemble is not None and ensemble.kind == "shallow" and ensemble.members > 1
        if shallow and self.data.split.kfold is not None:
            raise Invalid(
                "a shallow ensemble cannot be combined with data.split.kfold (the k fold "
                "models would form a committee of shallow ensembles); use kind: deep, or "
                "train the folds' shallow ensembles separately",
                keys=("model.ensemble.kind", "data.split.kfold"),
            )
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration file, for editors and checks."""
    schema = Config.model_json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": "jat training configuration"}


def section_class(path: tuple[str, ...]) -> type[Section] | None:
    """The section model at a dotted path (``()``: :class:`Config`), ``None`` if not a section;
    a number steps into a list of sections (``loss.properties.0``)."""
    cls: Any = Config
    for part in path:
        if part.isdigit() and typing.get_origin(cls) is tuple:
            cls = typing.get_args(cls)[0]
        else:
            info = cls.model_fields.get(part) if isinstance(cls, type) else None
            cls = info.annotation if info is not None else None
        if typing.get_origin(cls) is tuple:
            continue
        if not (isinstance(cls, type) and issubclass(cls, Section)):
            return None
    return cls


__all__ = [
    "JSON_SCHEMA_DIALECT",
    "PROGRESS_MODES",
    "Ani1Config",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "LossConfig",
    "OptimizerConfig",
    "PER_BATCH_FROM",
    "PROPERTY_KINDS",
    "PropertyTargetConfig",
    "Qm9Config",
    "SplitConfig",
    "TrainingConfig",
    "formats",
    "json_schema",
    "section_class",
]
