"""Validation reports every mistake of a spec at once (file, field, what was expected) and refuses
inverted search ranges, in `fpr-sweep validate` and `run --dry-run` (real CLI subprocesses) and in
load_spec; the JSON schema names the cross-field rules it cannot express."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from orchestrator.sweep.json_schema import spec_json_schema
from orchestrator.sweep.spec import SpecError, load_spec

from conftest import TINY_BASE, write_spec

TASKS = [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          timeout=300)


def _problems(path) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(path)
    return str(e.value)


@pytest.mark.parametrize("dist, why", [
    ({"type": "loguniform", "low": 1e-2, "high": 1e-4}, "inverted range: low 0.01 > high 0.0001"),
    ({"type": "uniform", "low": 0.5, "high": 0.1}, "inverted range: low 0.5 > high 0.1"),
    ({"type": "int", "low": 9, "high": 3}, "inverted range: low 9 > high 3"),
    ({"type": "int", "low": 0, "high": 3, "log": True}, "log-scaled int range needs low >= 1"),
    ({"type": "loguniform", "low": 0, "high": 1e-3}, "greater than 0"),
])
def test_bad_ranges_are_refused(spec_dir, dist, why):
    path = write_spec(spec_dir, name="ranges", tasks=TASKS,
                      search={"space": {"optim.lr": dist}, "num_samples": 2})
    text = _problems(path)
    assert str(path) in text and "search.space['optim.lr']" in text and why in text, text


def test_three_shape_mistakes_reported_together(spec_dir):
    path = write_spec(spec_dir, name="three", tasks=TASKS, seeds=[0, 0], colour="blue",
                      search={"space": {"optim.lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}},
                              "num_samples": 2})
    text = _problems(path)
    assert "seeds: seeds repeat: [0, 0]; expected distinct integers" in text
    assert "colour: unknown key" in text
    assert "search.space['optim.lr']: inverted range" in text and "expected low <= high" in text


def test_four_config_mistakes_reported_together(spec_dir):
    base = {**TINY_BASE, "model": {**TINY_BASE["model"], "heads": 3}}  # dim 16 is not divisible by 3
    path = write_spec(spec_dir, name="three_cfg", base=base,
                      tasks=[{"name": "prefix_sumz"}, {"name": "mazes", "axes": {"model.norm": ["rms"]}}],
                      axes={"model.recal": ["none"]})
    lines = _problems(path).splitlines()
    assert "(4 problems)" in lines[0] and str(path) in lines[0], lines
    assert any(l.strip().startswith("base:") and "heads" in l for l in lines), lines
    assert any("tasks[0].name: unknown task 'prefix_sumz'; expected one of" in l for l in lines), lines
    assert any(l.strip().startswith("axes['model.recal']:") for l in lines), lines
    assert any("tasks[1].axes['model.norm']: model.norm is not a grid axis" in l for l in lines), lines


@pytest.mark.slow
def test_validate_and_dry_run_print_every_mistake_and_exit_2(spec_dir):
    path = write_spec(spec_dir, name="three_cli", tasks=TASKS, seeds=[0, 0], colour="blue",
                      search={"space": {"optim.lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}},
                              "num_samples": 2})
    for args in (["validate", str(path)], ["run", str(path), "--dry-run"]):
        result = _cli(*args)
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        for needle in ("seeds repeat", "colour: unknown key", "inverted range: low 0.01 > high 0.0001"):
            assert needle in out, out
        assert "three_cli.yaml" in out


def test_schema_names_cross_field_rules():
    schema = spec_json_schema()
    text = json.dumps(schema)
    defs = schema.get("$defs", {})
    assert "low <= high" in json.dumps(defs.get("LogUniform", {})) and "0 < low" in json.dumps(defs.get("LogUniform"))
    assert "low <= high" in json.dumps(defs.get("IntRange", {}))
    assert "divisible by model.heads" in defs["ModelConfig"]["properties"]["dim"]["description"]
    assert schema["properties"]["name"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    metric = re.compile(defs["SearchSpec"]["properties"]["metric"]["pattern"])
    assert metric.match("acc/ood_64") and metric.match("acc/id") and not metric.match("accuracy/ood_64")
    assert "not both" in defs["SearchSpec"]["properties"]["space"]["description"]
    assert "axes of the sweep" in text
    assert yaml.safe_dump(schema)  # still plain data
