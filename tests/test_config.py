"""The training configuration schema: defaults, template, YAML files, overrides and errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from jat.config import (
    Config,
    ConfigError,
    FrozenMapping,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_duration,
    template,
)
from jat.config.model_section import NOT_HYPER
from jat.config.values import Section
from jat.models import MODELS


def _error(path=None, overrides=(), text=None, tmp_path=None) -> ConfigError:
    if text is not None:
        path = tmp_path / "ean.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


def _options(cls, prefix=""):
    """Every dotted option key of the schema (sections recursed into, model.hyper left out)."""
    for name, info in cls.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            yield from _options(info.annotation, f"{prefix}{name}.")
        elif not (cls is ModelConfig and name == "hyper"):
            yield f"{prefix}{name}"


# --------------------------------------------------------------------------------------------
# Defaults and the template


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config() == config_from_dict({}) == config_from_dict(None)
    assert hash(cfg) == hash(Config())
    assert cfg.data.train == ("builtin",)
    assert cfg.model.name == "jat" and cfg.model.cutoff == 5.0 and cfg.model.dtype == "float32"
    assert dict(cfg.model.hyper) == {"layers": 3, "width": 32, "heads": 1}
    assert cfg.optimizer.lr_min == 5e-4 and cfg.optimizer.ema_decay == 0.99
    assert cfg.training.time_budget is None and cfg.training.epochs == 200
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    with pytest.raises(TypeError):
        cfg.model.hyper["width"] = 3


def test_template_round_trip():
    text = template()
    raw = yaml.safe_load(text)
    assert config_from_dict(raw, "template") == Config()
    assert raw == config_to_dict(Config())
    assert text.startswith("# jat training configuration. Units: Å, eV, eV/Å.")
    lines = text.splitlines()
    # A few lines exactly as documented (comments at column 26).
    for line in (
        "name: jat                 # run name; the run directory is "
        "<output_dir>/<name>-<YYYYmmdd-HHMMSS> unless run_dir is set",
        '  train: builtin          # file or list of files; "builtin" = the EAN GFN2-xTB set '
        "shipped with jat",
        "    exclude_formulas: []  # formulas (e.g. [C2H6]) kept out of training, evaluated as "
        "out-of-sample",
        "  layers: 3               # any hyperparameter of the model; here JAT's",
        "  lr_min: 5.0e-4          # one-cycle: start, reached again at 90 % of the steps",
        "  wandb_project: jat      # Weights & Biases project",
        "  name: jat               # jat | schnet | bessel | painn; the model class in jat.models",
    ):
        assert line in lines
    # Every option of the schema is in the template, with a comment.
    undocumented = set()
    for key in _options(Config):
        name = key.rsplit(".", 1)[-1]
        matches = [ln for ln in lines if ln.lstrip().startswith(f"{name}:")]
        assert matches, key
        if not any("#" in ln for ln in matches):
            undocumented.add(key)
    assert undocumented == set()
    # Every model is listed with its hyperparameters.
    for name in MODELS:
        assert any(ln.startswith(f"  #   {name}: ") for ln in lines), name


def test_dump_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "name=ean run",
            "run_dir=/tmp/x y/run",
            "data.train=[a.h5, 'b #1.h5']",
            "data.validation=null",
            "data.test='1.0'",
            "data.species=[H, C, N, O]",
            "data.composition=[NHHHCHHCHHH, NOOO]",
            "data.split.validation=100",
            "data.split.exclude_formulas=C2H6",
            "model.name=schnet",
            "model.features=64",
            "model.gamma=10",
            "model.norm=layernorm",
            "optimizer.lr_final=1e-7",
            "optimizer.lr_max=1234567.0",
            "optimizer.lr_min=1e-2",
            "training.time_budget=1h30m",
            "logging.wandb_project='null'",
        ],
    )
    assert cfg.data.test == ("1.0",) and cfg.logging.wandb_project == "null"
    for comments in (True, False):
        text = dump_config(cfg, comments=comments)
        assert ("#" in text.splitlines()[0]) == comments
        assert config_from_dict(yaml.safe_load(text)) == cfg
        assert yaml.safe_load(text) == config_to_dict(cfg)
        path = tmp_path / f"dump{comments}.yaml"
        path.write_text(text)
        assert load_config(path) == cfg
    raw = config_to_dict(cfg)
    assert raw["model"] == {
        "name": "schnet",
        "cutoff": 5.0,
        "dtype": "float32",
        "repulsion": "none",
        "repulsion_radii": "data",
        "repulsion_radius_scale": 0.8,
        "ensemble": {"kind": "deep", "members": 1, "bootstrap": False},
        "features": 64,
        "gamma": 10.0,
        "norm": "layernorm",
    }
    assert raw["data"]["train"] == ["a.h5", "b #1.h5"] and raw["data"]["test"] == "1.0"
    assert yaml.safe_load(yaml.safe_dump(raw)) == raw  # plain YAML-safe types only


# --------------------------------------------------------------------------------------------
# Files and overrides


def test_file_and_overrides(tmp_path):
    path = tmp_path / "ean.yaml"
    path.write_text(
        "name: ean\n"
        "data:\n"
        "  train: ean_train.jsonl\n"
        "  split:\n"
        "    validation: 0.2\n"
        "model:\n"
        "  layers: 5\n"
        "training:\n"
        "  epochs: 50\n"
        "  time_budget: 20m\n"
        "optimizer:\n"
        "  lr_max: 3e-3\n"  # YAML 1.1 reads this as a string
    )
    cfg = load_config(path)
    assert cfg.name == "ean" and cfg.data.train == ("ean_train.jsonl",)
    assert cfg.data.split.validation == 0.2 and cfg.training.epochs == 50
    assert cfg.training.time_budget == 1200.0 and cfg.optimizer.lr_max == 3e-3
    assert dict(cfg.model.hyper) == {"layers": 5, "width": 32, "heads": 1}

    cfg = load_config(
        str(path),
        [
            "training.epochs=20",
            "data.train=[a.h5,b.h5]",
            "optimizer.ema_decay=null",
            "model.readout=[64, 32, 16, 16]",
            "model.heads=2",
            "seed=7",
            "training.epochs=30",  # the last one wins
            "logging.progress=lines",
        ],
    )
    assert cfg.training.epochs == 30 and cfg.seed == 7 and cfg.training.time_budget == 1200.0
    assert cfg.data.train == ("a.h5", "b.h5") and cfg.data.split.validation == 0.2
    assert cfg.optimizer.ema_decay is None and cfg.logging.progress == "lines"
    assert dict(cfg.model.hyper) == {
        "layers": 5,
        "width": 32,
        "heads": 2,
        "readout": (64, 32, 16, 16),
    }
    assert "readout: [64, 32, 16, 16]" in dump_config(cfg)


def test_empty_file_and_sections(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == Config()
    path.write_text("data:\n  # train: x\nmodel:\n")
    assert load_config(path) == Config()
    assert load_config(path, ["data.split.test=5"]).data.split.test == 5


def test_model_from_overrides_only():
    cfg = load_config(None, ["model.name=schnet", "model.features=64"])
    assert cfg.model.name == "schnet" and dict(cfg.model.hyper) == {"features": 64}
    # The default hyperparameters belong to the default model only.
    assert dict(load_config(None, ["model.name=schnet"]).model.hyper) == {}
    cfg = load_config(None, ["model={name: schnet, interactions: 6}"])
    assert dict(cfg.model.hyper) == {"interactions": 6}
    cfg = load_config(None, ["model.name=jat", "model.width=64"])
    assert dict(cfg.model.hyper) == {"layers": 3, "width": 64, "heads": 1}


def test_every_model_accepts_its_hyperparameters():
    for name, cls in MODELS.items():
        for f in dataclasses.fields(cls):
            if f.name in NOT_HYPER:  # set by Flax, data.species, cutoff or model.ensemble
                continue
            if f.default is dataclasses.MISSING:  # required, or a default_factory
                continue
            cfg = config_from_dict({"model": {"name": name, f.name: f.default}})
            value = cfg.model.hyper[f.name]
            assert value == (tuple(f.default) if isinstance(f.default, list) else f.default)
            assert config_from_dict(config_to_dict(cfg)) == cfg


def test_model_errors():
    err = _error(None, ["model.name=schnet", "model.heads=2"])
    assert str(err).startswith("command line: model.heads: not a hyperparameter of model 'schnet'")
    assert "valid keys: cutoff, dtype, ensemble, features, filters" in str(err)  # the valid ones
    err = _error(None, ["model.name=schnet", "model.featurs=2"])
    assert str(err).endswith("did you mean 'features'?")
    err = _error(None, ["model.name=transformer"])
    assert err.key == "model.name" and all(name in str(err) for name in MODELS)
    err = _error(None, ["model.widht=64"])
    assert str(err) == (
        "command line: model.widht: not a hyperparameter of model 'jat'; did you mean 'width'?"
    )
    assert _error(None, ["model.width=wide"]).message == "expected an integer, got 'wide'"
    assert "entry 1" in _error(None, ["model.readout=[64, x]"]).message
    assert "a list of an integer" in _error(None, ["model.readout=64"]).message
    assert "data.species" in _error(None, ["model.num_species=4"]).message
    assert _error(None, ["model.cutoff=-1"]).message == "must be > 0; got -1.0"
    err = _error(None, ["model.name=schnet", "model.num_rbf=x"])
    assert err.message == "expected an integer or null, got 'x'"
    assert load_config(None, ["model.name=schnet", "model.num_rbf=null"]).model.hyper == {
        "num_rbf": None
    }


def test_model_hyper_is_hashable_and_frozen():
    cfg = load_config(None, ["model.readout=[64, 32]"])
    assert isinstance(cfg.model.hyper, FrozenMapping)
    assert hash(cfg) == hash(load_config(None, ["model.readout=[64, 32]"]))
    assert ModelConfig(hyper=FrozenMapping(width=32, heads=1, layers=3)) == ModelConfig()


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("nme=x", "nme", "name"),
        ("data.trian=x.h5", "data.trian", "train"),
        ("data.splt.validation=0.2", "data.splt", "split"),
        ("data.split.valdation=0.2", "data.split.valdation", "validation"),
        ("data.ani1.fracton=0.5", "data.ani1.fracton", "fraction"),
        ("model.dtyp=float64", "model.dtyp", "dtype"),
        ("loss.force_weight=1", "loss.force_weight", "forces_weight"),
        ("optimizer.lr=1", "optimizer.lr", "one of lr_final, lr_max, lr_min"),
        ("optimizer.ema=0.9", "optimizer.ema", "ema_decay"),
        ("training.epoch=3", "training.epoch", "epochs"),
        ("trainig.epochs=3", "trainig", "training"),
        ("logging.wandb_mod=online", "logging.wandb_mod", "wandb_mode"),
    ],
)
def test_unknown_keys(override, key, suggestion):
    err = _error(None, [override])
    quoted = suggestion if suggestion.startswith("one of") else f"'{suggestion}'"
    if key.startswith("model."):
        assert str(err) == (
            f"command line: {key}: not a hyperparameter of model 'jat'; did you mean {quoted}?"
        )
    else:
        assert str(err) == f"command line: {key}: unknown key; did you mean {quoted}?"
    assert (err.source, err.key) == ("command line", key)


def test_unknown_key_in_file_names_file_and_lists_valid_keys(tmp_path):
    err = _error(text="data:\n  splt:\n    validation: 0.2\n", tmp_path=tmp_path)
    assert str(err) == f"{tmp_path / 'ean.yaml'}: data.splt: unknown key; did you mean 'split'?"
    err = _error(text="loss:\n  zzz: 1\n", tmp_path=tmp_path)
    assert err.message.startswith("unknown key; valid keys: energy_alpha, energy_weight")


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("training.epochs=ten", "training.epochs", "expected an integer, got 'ten'"),
        ("training.epochs=2.5", "training.epochs", "expected an integer, got 2.5"),
        ("training.epochs=true", "training.epochs", "expected an integer, got true"),
        ("training.epochs=0", "training.epochs", "must be > 0; got 0"),
        ("training.batch_size=-8", "training.batch_size", "must be > 0; got -8"),
        ("training.patience=0", "training.patience", "must be > 0; got 0"),
        ("training.monitor=mae", "training.monitor", "must be one of auto, forces_mae, "),
        ("training.energy_reference=mean", "training.energy_reference", "must be one of fit, "),
        ("optimizer.name=sgd", "optimizer.name", "must be one of adam, adamw; got 'sgd'"),
        ("optimizer.schedule=cosine", "optimizer.schedule", "must be one of onecycle, "),
        ("optimizer.lr_max=0", "optimizer.lr_max", "must be > 0; got 0.0"),
        ("optimizer.lr_max=fast", "optimizer.lr_max", "expected a number, got 'fast'"),
        ("optimizer.lr_max=.inf", "optimizer.lr_max", "must be finite"),
        ("optimizer.ema_decay=1", "optimizer.ema_decay", "must be >= 0 and < 1; got 1.0"),
        ("optimizer.ema_decay=-0.1", "optimizer.ema_decay", "must be >= 0 and < 1"),
        ("optimizer.clip_norm=0", "optimizer.clip_norm", "must be > 0"),
        ("optimizer.per_epoch=1", "optimizer.per_epoch", "expected true or false, got 1"),
        ("loss.energy_weight=-1", "loss.energy_weight", "must be >= 0"),
        ("loss.forces_alpha=0", "loss.forces_alpha", "must be > 0"),
        ("data.format=xyz", "data.format", "must be one of auto, ani1, neuralil, md17, qm9, ase"),
        ("data.split.by=atom", "data.split.by", "must be one of configuration, molecule, auto"),
        ("data.split.validation=-1", "data.split.validation", "must be >= 0"),
        ("data.split.validation=2.5", "data.split.validation", "a fraction must be < 1"),
        ("data.split.n_train=0", "data.split.n_train", "must be > 0"),
        ("data.split.exclude_formulas=[c2h6]", "data.split.exclude_formulas", "formula"),
        ("data.ani1.fraction=0", "data.ani1.fraction", "must be > 0 and <= 1; got 0.0"),
        ("data.ani1.fraction=1.5", "data.ani1.fraction", "must be > 0 and <= 1; got 1.5"),
        ("data.train=[]", "data.train", "expected at least one file"),
        ("data.train={a: 1}", "data.train", "expected a file name or a list of file names"),
        ("data.train=[a.h5, 3]", "data.train", "entry 1: expected a file name, got 3"),
        ("data.species=H", "data.species", "expected a list of element symbols"),
        ("data.species=[H, Hx]", "data.species", "'Hx' is not an element symbol"),
        ("data.species=[H, C, H]", "data.species", "repeated element(s) H"),
        ("data.composition=[NH3X]", "data.composition", "'NH3X' is not a sequence"),
        ("model.dtype=float16", "model.dtype", "must be one of float32, float64"),
        ("logging.wandb=yes please", "logging.wandb", "expected true or false"),
        ("logging.wandb_mode=disabled", "logging.wandb_mode", "must be one of offline, online"),
        ("name=runs/a", "name", "must be a plain name"),
        ("seed=-1", "seed", "must be >= 0"),
        ("training.time_budget=soon", "training.time_budget", "invalid duration 'soon'"),
        ("training.time_budget=0", "training.time_budget", "must be > 0"),
        ("training=5", "training", "expected a mapping of options, got 5"),
    ],
)
def test_type_and_range_errors(override, key, message):
    err = _error(None, [override])
    assert (err.source, err.key) == ("command line", key)
    assert message in err.message
    assert str(err).startswith(f"command line: {key}: ")


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["loss.forces_weight=0"], "loss.forces_weight", "both 0"),
        (["loss.energy_weight=0", "loss.forces_weight=0.0"], "loss.forces_weight", "both 0"),
        (["optimizer.weight_decay=1e-4"], "optimizer.weight_decay", "adamw"),
        (["optimizer.lr_min=0.01"], "optimizer.lr_min", "exceeds the one-cycle peak"),
        (["optimizer.lr_max=1e-6"], "optimizer.lr_max", "exceeds the one-cycle peak"),
        (["data.split.test=0.5", "data.split.validation=0.5"], "data.split.validation", "1"),
        (["data.format=ani1", "data.composition=[NOOO]"], "data.composition", "neuralil"),
    ],
)
def test_cross_field_errors(overrides, key, message):
    err = _error(None, overrides)
    assert (err.source, err.key) == ("command line", key)
    assert message in err.message


def test_cross_field_ok():
    cfg = load_config(None, ["optimizer.name=adamw", "optimizer.weight_decay=1e-4"])
    assert cfg.optimizer.weight_decay == 1e-4
    cfg = load_config(None, ["optimizer.schedule=constant", "optimizer.lr_max=1e-6"])
    assert cfg.optimizer.lr_max == 1e-6
    cfg = load_config(None, ["loss.forces_weight=0", "loss.energy_weight=1"])
    assert cfg.loss.energy_weight == 1.0


def test_source_is_file_or_command_line(tmp_path):
    path = tmp_path / "ean.yaml"
    path.write_text("training:\n  epochs: ten\n  batch_size: 4\n")
    err = _error(path, ["training.batch_size=8"])
    assert str(err) == f"{path}: training.epochs: expected an integer, got 'ten'"
    path.write_text("training:\n  epochs: 10\n")
    err = _error(path, ["training.epochs=ten"])
    assert str(err) == "command line: training.epochs: expected an integer, got 'ten'"
    # A cross-field error blames the key that came from the command line.
    path.write_text("loss:\n  energy_weight: 0\n")
    err = _error(path, ["loss.forces_weight=0"])
    assert (err.source, err.key) == ("command line", "loss.forces_weight")
    path.write_text("loss:\n  forces_weight: 0\n")
    assert _error(path).source == str(path)
    # A hyperparameter from the file that the model chosen on the command line lacks.
    path.write_text("model:\n  heads: 2\n")
    err = _error(path, ["model.name=schnet"])
    assert (err.source, err.key) == (str(path), "model.heads")
    err = config_from_dict_error({"seed": "x"}, "mine")
    assert str(err) == "mine: seed: expected an integer, got 'x'"


def config_from_dict_error(d, source):
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, source)
    return info.value


def test_yaml_errors(tmp_path):
    err = _error(text="data:\n  train: [a.h5\nmodel: {}\n", tmp_path=tmp_path)
    assert str(err).startswith(f"{tmp_path / 'ean.yaml'}: line ") and "invalid YAML" in str(err)
    err = _error(text="seed: 1\nseed: 2\n", tmp_path=tmp_path)
    assert "line 2" in str(err) and "duplicate key 'seed'" in str(err)
    err = _error(text="- a\n- b\n", tmp_path=tmp_path)
    assert "top level must be a mapping" in str(err) and err.key is None
    err = _error(text="1: a\n", tmp_path=tmp_path)
    assert "keys must be strings" in str(err)
    err = _error(tmp_path / "missing.yaml")
    assert str(err) == f"{tmp_path / 'missing.yaml'}: no such file"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs", "expected key=value"),
        ("=3", "is not a dotted key"),
        ("training..epochs=3", "is not a dotted key"),
        ("training.epochs=[1", "cannot parse the value"),
        ("data.train.x=1", "not a section"),  # with data.train set below
    ],
)
def test_override_errors(override, message):
    err = _error(None, ["data.train=a.h5", override])
    assert err.source == "command line" and message in str(err)


# --------------------------------------------------------------------------------------------
# Coercion and durations


def test_coercion():
    cfg = load_config(
        None,
        [
            "model.cutoff=6",
            "training.epochs=20.0",
            "optimizer.lr_max=3e-3",
            "data.train=one.h5",
            "data.validation=[v1.h5, v2.h5]",
            "data.split.validation=200",
            "data.split.test=0.05",
            "data.split.exclude_formulas=C2H6",
            "training.energy_reference=null",
            "logging.progress=null",
            "name=2024",
        ],
    )
    assert cfg.model.cutoff == 6.0 and isinstance(cfg.model.cutoff, float)
    assert cfg.training.epochs == 20 and isinstance(cfg.training.epochs, int)
    assert cfg.optimizer.lr_max == 3e-3
    assert cfg.data.train == ("one.h5",) and cfg.data.validation == ("v1.h5", "v2.h5")
    assert cfg.data.split.validation == 200 and isinstance(cfg.data.split.validation, int)
    assert cfg.data.split.test == 0.05 and cfg.data.split.exclude_formulas == ("C2H6",)
    assert cfg.training.energy_reference == "none" and cfg.logging.progress == "none"
    assert cfg.name == "2024"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("20m", 1200.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("2d", 172800.0),
        (" .5h ", 1800.0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds
    if not isinstance(value, (int, float)):
        assert load_config(None, [f"training.time_budget='{value}'"]).training.time_budget == (
            seconds
        )


@pytest.mark.parametrize("value", ["", "soon", "1x", "1h1h", "-5", "h", "1.2.3m", True, None, [1]])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_models_are_looked_up_not_hard_coded(monkeypatch):
    @dataclasses.dataclass
    class Toy:
        num_species: int
        cutoff: float
        depth: int = 2
        widths: tuple[int, ...] = (8, 8)

    monkeypatch.setitem(MODELS, "toy", Toy)
    cfg = load_config(None, ["model.name=toy", "model.depth=3", "model.widths=[4, 4, 4]"])
    assert dict(cfg.model.hyper) == {"depth": 3, "widths": (4, 4, 4)}
    assert "toy" in _error(None, ["model.name=nope"]).message
    err = _error(None, ["model.name=toy", "model.dept=3"])
    assert err.message == "not a hyperparameter of model 'toy'; did you mean 'depth'?"


# --------------------------------------------------------------------------------------------
# Model hyperparameters: range-checked by the model class


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["model.heads=0"], "model.heads", "must be between 1 and 32, got 0"),
        (["model.width=0"], "model.width", "must be between 1 and"),
        (["model.layers=-1"], "model.layers", "must be between 1 and"),
        (["model.heads=5"], "model.heads", "width 32 is not divisible by heads 5"),
        (["model.readout=[64, 0]"], "model.readout", "entry 1: must be between 1 and"),
        (["model.envelope=square"], "model.envelope", "unknown envelope 'square'; choose from"),
        (["model.name=schnet", "model.features=1"], "model.features", "must be between 2 and"),
        (["model.name=bessel", "model.widths=[]"], "model.widths", "must not be empty"),
        (["model.cutoff=5000"], "model.cutoff", "at most 1000"),
    ],
)
def test_model_hyperparameters_are_range_checked(overrides, key, message):
    err = _error(None, overrides)
    assert (err.source, err.key) == ("command line", key)
    assert message in err.message


def test_model_range_error_names_the_file(tmp_path):
    path = tmp_path / "ean.yaml"
    path.write_text("model:\n  width: 48\n  heads: 0\n")
    err = _error(path)
    assert str(err) == f"{path}: model.heads: must be between 1 and 48, got 0"
    err = _error(path, ["model.heads=7"])
    assert str(err) == "command line: model.heads: width 48 is not divisible by heads 7"


def test_model_section_python_forms():
    assert ModelConfig(name="schnet", features=64).hyper == {"features": 64}
    assert ModelConfig(name="schnet", hyper={"features": 64}) == ModelConfig(
        name="schnet", features=64
    )
    assert ModelConfig(hyper={"width": 64}).hyper == {"width": 64}  # exactly what is given
    assert Config(model={"name": "bessel", "widths": [8]}).model.hyper == {"widths": (8,)}
    with pytest.raises(ValueError, match="must be between 1 and"):
        ModelConfig(heads=0)
    # In a file, "hyper" is not a key: the hyperparameters are written flat.
    err = _error(None, ["model.hyper={width: 64}"])
    assert err.key == "model.hyper" and "not a hyperparameter of model 'jat'" in err.message


def test_config_objects_are_frozen_and_hashable():
    cfg = load_config(None, ["data.train=[a.h5, b.h5]", "training.time_budget=20m"])
    for obj, name in ((cfg.data, "train"), (cfg.model, "hyper"), (cfg.data.split, "test")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
    assert cfg.data.train == ("a.h5", "b.h5") and cfg.training.time_budget == 1200.0
    assert {cfg: 1}[load_config(None, ["data.train=[a.h5, b.h5]", "training.time_budget=1200"])]


def test_choices_suggest_the_closest():
    err = _error(None, ["training.monitor=forces_ma"])
    assert err.message.endswith("(did you mean 'forces_mae'?)")
    assert "did you mean 'schnet'" in _error(None, ["model.name=shcnet"]).message


def test_sections_must_be_mappings_with_string_keys(tmp_path):
    err = _error(None, ["model=5"])
    assert (err.key, err.message) == ("model", "expected a mapping of options, got 5")
    err = _error(text="data:\n  1: a\n", tmp_path=tmp_path)
    assert (err.key, err.message) == ("data", "keys must be strings, got 1")


def test_defaults_do_not_import_jax():
    import subprocess
    import sys

    code = (
        "import sys; from jat.config import Config, config_from_dict, load_config; "
        "Config(); load_config(None, ['training.epochs=3']); config_from_dict({'seed': 1}); "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
