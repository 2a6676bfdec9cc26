"""`fpr-sweep schema` checked by an independent validator (the `jsonschema` package): it accepts every
shipped spec and rejects each mistake an editor should flag before anything runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.sections import SECTIONS, field_names

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))
QUICKSTART = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, spec: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)]


def with_change(change) -> dict:
    spec = copy.deepcopy(QUICKSTART)
    change(spec)
    return spec


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_is_accepted(validator, path):
    assert errors(validator, yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("section", list(SECTIONS))
def test_an_unknown_field_is_rejected_in_every_section(validator, section):
    spec = with_change(lambda s: s.setdefault("base", {}).__setitem__(section, {"no_such_field": 1}))
    assert any("no_such_field" in e for e in errors(validator, spec))
    spec = with_change(lambda s: s["tasks"][0].setdefault("overrides", {}).__setitem__(f"{section}.no_such_field", 1))
    assert errors(validator, spec)


def test_every_field_of_every_section_is_documented(validator):
    defs = validator.schema["$defs"]
    for section, cls in SECTIONS.items():
        props = defs[cls.__name__]["properties"]
        assert set(props) == set(field_names(section))
        undocumented = [name for name, p in props.items() if not p.get("description")]
        assert not undocumented, (section, undocumented)
    recall = defs["ModelConfig"]["properties"]["recall"]
    assert recall["enum"] == ["none", "standard", "internal"] and recall["default"] == "standard"


MISTAKES = {
    "bad_enum": lambda s: s["base"]["model"].__setitem__("recall", "standrd"),
    "bad_enum_on_an_axis": lambda s: s["axes"].__setitem__("model.recall", ["none", "standrd"]),
    "unknown_field_on_an_axis": lambda s: s["axes"].__setitem__("model.recal", ["none"]),
    "unknown_task": lambda s: s["tasks"][0].__setitem__("name", "mazess"),
    "string_for_a_number": lambda s: s["base"]["train"].__setitem__("steps", "many"),
    "string_for_a_bool": lambda s: s["base"].setdefault("eval", {}).__setitem__("diagnostics", "yes"),
    "bool_for_an_integer": lambda s: s["base"]["train"].__setitem__("steps", True),
    "unknown_top_level_key": lambda s: s.__setitem__("seedz", [0]),
    "bad_grad_shorthand": lambda s: s["base"].__setitem__("grad", "truncatd:4"),
    "unknown_search_field": lambda s: s.__setitem__("search", {"num_samples": 2, "space": {
        "train.learning_rate": {"type": "uniform", "low": 0.001, "high": 0.01}}}),
    "unknown_scheduler_metric": lambda s: s.__setitem__("scheduler", {"type": "asha", "metric": "loss"}),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_is_rejected(validator, name):
    assert errors(validator, with_change(MISTAKES[name])), name


def test_the_quickstart_has_what_the_mistakes_change():
    assert {"model", "train"} <= set(QUICKSTART["base"]) and "model.recall" in QUICKSTART["axes"]
