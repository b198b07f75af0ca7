"""The JSON schema of the configuration file, and the command line's configuration options
(--schema, --template, --print-config with and without --resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jat.config import (
    Config,
    config_to_dict,
    dump_config,
    json_schema,
    load_config,
    template,
)
from jat.models import MODELS
from jat.train import main

# training configurations; the tuning files (tune_*.yaml) have their own reader, tested in
# test_tune.py
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")
                  if not p.name.startswith("tune_"))


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_draft_2020_12_and_describes_the_options():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    model = schema["$defs"]["ModelConfig"]
    assert model["properties"]["name"]["enum"] == list(MODELS)
    assert {"cutoff", "dtype", "repulsion"} <= model["properties"].keys()
    assert model["properties"]["dtype"]["enum"] == ["float32", "float64"]
    assert [b["properties"]["name"]["const"] for b in model["oneOf"]] == list(MODELS)
    jat_branch = model["oneOf"][0]["properties"]
    assert jat_branch["width"]["default"] == 32 and jat_branch["readout"]["type"] == "array"
    epochs = schema["$defs"]["TrainingConfig"]["properties"]["epochs"]
    assert epochs["type"] == "integer" and epochs["exclusiveMinimum"] == 0
    assert epochs["description"].startswith("number of epochs")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_the_examples(validator, path):
    assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == []
    load_config(path)  # and so does the validation


def test_schema_accepts_template_and_dumps(validator):
    assert list(validator.iter_errors(yaml.safe_load(template()))) == []
    cfg = load_config(
        None,
        [
            "data.train=[a.h5, b.h5]",
            "data.species=[H, C]",
            "data.split.exclude_formulas=C2H6",
            "model.name=schnet",
            "model.features=16",
            "model.num_rbf=null",
            "training.time_budget=1h30m",
        ],
    )
    for text in (dump_config(cfg), dump_config(cfg, comments=False)):
        assert list(validator.iter_errors(yaml.safe_load(text))) == []
    assert list(validator.iter_errors(config_to_dict(cfg))) == []
    assert list(validator.iter_errors({"training": {"time_budget": "20m"}})) == []


@pytest.mark.parametrize(
    "doc",
    [
        {"trainig": {}},
        {"training": {"epochs": 0}},
        {"training": {"time_budget": "soon"}},
        {"data": {"format": "xyz"}},
        {"data": {"species": ["H", "Hx"]}},
        {"optimizer": {"ema_decay": 1.0}},
        {"model": {"name": "schnet", "width": 32}},  # a JAT hyperparameter
        {"model": {"widht": 32}},
        {"model": {"name": "transformer"}},
        {"model": {"hyper": {"width": 32}}},
    ],
)
def test_schema_rejects(validator, doc):
    assert list(validator.iter_errors(doc))


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_schema(capsys):
    assert main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_cli_template_round_trips(capsys, tmp_path):
    assert main(["--template"]) == 0
    path = tmp_path / "template.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == Config()


def test_cli_print_config(capsys, tmp_path):
    assert main(["training.epochs=7", "--print-config"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == load_config(None, ["training.epochs=7"])


def test_cli_resume_print_config_prints_the_stored_config(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["name=stored", "model.name=schnet", "training.epochs=5"])
    (run / "config.yaml").write_text(dump_config(cfg))
    assert main(["--resume", str(run), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out == dump_config(cfg)
    # Not a run directory, or an invalid stored configuration: an error naming it.
    assert main(["--resume", str(tmp_path / "nope"), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "not a jat run directory (no config.yaml)" in err
    (run / "config.yaml").write_text("training:\n  epochs: ten\n")
    assert main(["--resume", str(run), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: training.epochs: expected an integer" in err
    with pytest.raises(SystemExit):  # overrides do not go with --resume
        main(["--resume", str(run), "training.epochs=3", "--print-config"])
