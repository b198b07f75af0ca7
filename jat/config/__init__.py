"""The training configuration: a YAML file, checked against pydantic section models.

    cfg = load_config("ean.yaml", ["training.epochs=20", "model.width=64"])
    cfg.training.epochs, cfg.model.name, dict(cfg.model.hyper)

Every option is declared once, in :mod:`jat.config.options` (or :mod:`jat.config.model_section`),
with its type and bounds, its default and its description, so the checks, the defaults,
:func:`template` (the commented YAML template) and :func:`json_schema` (``python -m jat.train
--schema``) cannot drift apart. Unknown keys are rejected with the closest valid name; every error
is a :class:`ConfigError` naming the source (file name or "command line") and the dotted key.
Model hyperparameters are those of the chosen class in :data:`jat.models.MODELS`, range-checked
by the class itself. Validating a ``model`` section imports :mod:`jat.models` (and JAX); nothing
else does.

Modules: :mod:`~jat.config.values` (value types, :class:`FrozenMapping`),
:mod:`~jat.config.options` (the sections), :mod:`~jat.config.model_section` (the ``model``
section), :mod:`~jat.config.parsing` (validation, errors, overrides), :mod:`~jat.config.yaml_io`
(files, dump, template).
"""

from jat.config.model_section import ModelConfig
from jat.config.options import (
    PER_BATCH_FROM,
    Ani1Config,
    Config,
    DataConfig,
    LoggingConfig,
    LossConfig,
    OptimizerConfig,
    Qm9Config,
    SplitConfig,
    TrainingConfig,
    json_schema,
)
from jat.config.parsing import COMMAND_LINE, ConfigError, config_from_dict
from jat.config.values import FrozenMapping, parse_duration
from jat.config.yaml_io import (
    RUN_CONFIG_FILE,
    config_to_dict,
    dump_config,
    load_config,
    load_run_config,
    template,
)

__all__ = [
    "COMMAND_LINE",
    "PER_BATCH_FROM",
    "RUN_CONFIG_FILE",
    "Ani1Config",
    "Config",
    "ConfigError",
    "DataConfig",
    "FrozenMapping",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "Qm9Config",
    "SplitConfig",
    "TrainingConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "json_schema",
    "load_config",
    "load_run_config",
    "parse_duration",
    "template",
]
