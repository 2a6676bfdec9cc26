"""Sweep specs: good ones load, every kind of mistake exits 2 with the file, field path and value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.plan import plan_sweep
from orchestrator.sweep.spec import SpecError, load_spec

from conftest import write_spec

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
TASK = {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16, 32]}


def test_quickstart_spec_is_valid():
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert spec.name == "quickstart"
    result = runner.invoke(app, ["validate", str(REPO / "sweeps" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok (" in result.output


def test_full_spec_loads(spec_dir):
    path = write_spec(spec_dir, name="full", description="every section", tasks=[
        dict(TASK, overrides={"train.steps": 12, "solver.eval_cap": 10})],
        axes={"model.recall": ["none", "standard"], "grad": ["truncated:2", "bptt"]},
        search={"num_samples": 3, "metric": "acc/ood_32", "mode": "max",
                "space": {"train.lr": {"type": "loguniform", "low": "1e-4", "high": 1e-2},
                          "model.spectral": {"type": "categorical", "values": [None, 1.0]}}},
        scheduler={"type": "asha", "metric": "train/loss", "mode": "min", "grace_period": 5},
        seeds=[0, 1], resources={"cpu": 1, "gpu": 0}, max_failures=2, max_concurrent=2)
    spec = load_spec(path)
    assert spec.search.space["train.lr"].low == pytest.approx(1e-4)
    assert spec.scheduler.type == "asha"


def test_yaml_exponent_without_dot_is_a_number(spec_dir):
    # YAML 1.1 reads 1e-3 as a string; a float field must still accept it.
    path = write_spec(spec_dir, name="exp", tasks=[TASK], base={"train": {"lr": "1e-3"}})
    from orchestrator.sweep.expand import expand

    assert expand(load_spec(path))[0].sections["train"]["lr"] == pytest.approx(1e-3)


BAD = [
    ("unknown_key", {"axes": {}, "seedz": [0]}, ["seedz", "unknown key"]),
    ("nested_unknown_key", {"resources": {"cpus": 2}}, ["resources.cpus", "unknown key"]),
    ("bad_enum", {"axes": {"model.recall": ["none", "nonee"]}},
     ["axes['model.recall'][1]", "'nonee'", "['none', 'standard', 'internal']"]),
    ("bad_type", {"base": {"train": {"steps": "many"}}}, ["train.steps", "'many'", "an integer"]),
    ("bad_type_pydantic", {"seeds": ["zero"]}, ["seeds[0]", "'zero'"]),
    ("path_traversal", {"name": "../evil"}, ["name", "'../evil'", "slug"]),
    ("slash_name", {"name": "a/b"}, ["name", "'a/b'"]),
    ("unknown_task", {"tasks": [{"name": "mazess"}]}, ["tasks[0].name", "'mazess'", "prefix_sums"]),
    ("bad_task_param", {"tasks": [{"name": "prefix_sums", "params": {"colour": 1}}]},
     ["tasks[0].params", "colour"]),
    ("bad_grad_string", {"base": {"grad": "truncatd:4"}}, ["grad.mode", "'truncatd'", "truncated"]),
    ("bad_grad_k", {"axes": {"grad": ["truncated:x"]}}, ["axes['grad'][0]", "truncated:x", "MODE:K"]),
    ("unknown_field", {"axes": {"model.recal": ["none"]}}, ["axes['model.recal']", "'recal'", "recall"]),
    ("unknown_section", {"axes": {"optim.lr": [0.1]}}, ["axes['optim.lr']", "'optim'"]),
    ("bad_combination", {"axes": {"model.dim": [16, 30]}, "base": {"model": {"heads": 4}}},
     ["model.dim", "30", "multiple of heads"]),
    ("override_and_axis", {"tasks": [dict(TASK, overrides={"train.steps": 5})], "axes": {"train.steps": [1, 2]}},
     ["tasks[0].overrides['train.steps']", "also set by axes"]),
    ("bad_search_bound", {"search": {"num_samples": 2, "space": {"train.lr": {"type": "loguniform", "low": -1, "high": 1}}}},
     ["search.space['train.lr'].low", "-1"]),
    ("bad_search_metric", {"search": {"num_samples": 2, "metric": "acc/ood_99",
                                      "space": {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.01}}}},
     ["search.metric", "acc/ood_99", "acc/ood_16"]),
    ("bad_scheduler_metric", {"scheduler": {"type": "asha", "metric": "loss"}}, ["scheduler.metric", "train/loss"]),
    ("empty_axis", {"axes": {"model.recall": []}}, ["axes", "no values"]),
    ("task_axis_not_global", {"tasks": [dict(TASK, axes={"model.outer_norm": ["rms"]})],
                              "axes": {"model.recall": ["none"]}},
     ["tasks[0].axes['model.outer_norm']", "not a grid axis", "model.recall"]),
    ("task_axis_bad_value", {"tasks": [dict(TASK, axes={"model.recall": ["nope"]})],
                             "axes": {"model.recall": ["none"]}},
     ["tasks[0].axes['model.recall'][0]", "'nope'"]),
]


@pytest.mark.parametrize("case,override,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_exits_2_with_clear_message(spec_dir, case, override, needles):
    spec = {"name": "bad", "tasks": [TASK], **override}
    path = write_spec(spec_dir, **spec)
    for command in (["validate", str(path)], ["run", str(path), "--dry-run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        text = " ".join(result.output.split())  # undo rich's line wrapping
        assert str(path) in text or path.name in text
        for needle in needles:
            assert needle in text, (needle, text)
    with pytest.raises(SpecError):
        plan_sweep(path)


def test_not_yaml_and_missing_file(spec_dir):
    (spec_dir / "broken.yaml").write_text("name: [unclosed\n")
    result = runner.invoke(app, ["validate", str(spec_dir / "broken.yaml")])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    result = runner.invoke(app, ["validate", str(spec_dir / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_schema_command_lists_every_key():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"name", "tasks", "axes", "base", "search", "scheduler", "seeds", "resources",
            "max_failures", "max_concurrent", "tracking_uri", "results_dir"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_help_explains_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("run", "validate", "status", "report", "schema", "ui"):
        assert command in result.output
    result = runner.invoke(app, ["run", "--help"])
    for option in ("--address", "--max-concurrent", "--tracking-uri", "--results-dir", "--dry-run", "--smoke"):
        assert option in result.output


def _alias_bomb(levels: int = 10) -> str:
    """~600 bytes of YAML whose aliases expand to 10**levels strings (a "billion laughs" spec)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines + [f"name: bomb\ndescription: *l{levels - 1}\ntasks: [{{name: prefix_sums}}]"]) + "\n"


def test_alias_bomb_is_refused_fast_with_a_bounded_message(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert path.stat().st_size < 1000
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and time.monotonic() - started < 30
    assert "aliases (*anchor) expand to more than" in done.stderr and len(done.stderr) < 600
    assert "Traceback" not in done.stderr


def test_error_excerpts_are_bounded_and_names_checked_whole(spec_dir):
    path = write_spec(spec_dir, name="big", description=[[f"{i}{j}" + "x" * 50 for j in range(30)] for i in range(30)], tasks=[TASK])
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "description" in str(err.value) and len(str(err.value)) < 400
    path = write_spec(spec_dir, name="trailing\n", tasks=[TASK])
    with pytest.raises(SpecError, match="name: expected a slug"):
        load_spec(path)
