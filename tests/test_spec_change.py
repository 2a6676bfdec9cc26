"""A changed spec under the same name is refused (issue 16, fault 10 of What to build): the real
CLI on a sweep folder as a first run left it; --extend records the change instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.run import record
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

REPO = Path(__file__).resolve().parent.parent
TASK = {"name": "prefix_sums", "train_size": 8, "ood_sizes": [32, 64]}


def test_changed_spec_is_refused_naming_the_fields_and_extend_is_recorded(tmp_path):
    path = write_spec(tmp_path, name="same", tasks=[TASK])
    first = load_spec(path)
    sweep_dir = tmp_path / "results" / "same"
    sweep_dir.mkdir(parents=True)
    record.write_record(sweep_dir, first, path.read_text(), path, "sqlite:///x.db", False, None)
    stored = (sweep_dir / "spec.yaml").read_text()

    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["ood_sizes"] = [24, 32]
    data["description"] = "not science: never a reason to refuse"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "tasks[0].ood_sizes: [32, 64] -> [24, 32]" in done.stderr and "description" not in done.stderr
    assert "new `name`" in done.stderr and "--results-dir" in done.stderr and "--extend" in done.stderr
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout  # refused before anything ran
    assert (sweep_dir / "spec.yaml").read_text() == stored  # the stored spec is kept
    assert json.loads((sweep_dir / "sweep.json").read_text())["spec_hash"] == first.spec_hash()
    assert not (sweep_dir / "driver.lock").exists()

    changed = load_spec(path)
    old_hash = record.check_spec(changed, sweep_dir, extend=True)
    assert old_hash == first.spec_hash()
    info = record.write_record(sweep_dir, changed, path.read_text(), path, "sqlite:///x.db", False, old_hash)
    assert [h["action"] for h in info["history"]] == ["created", "extended"]
    assert info["history"][-1]["extended_from"] == first.spec_hash()
    assert record.check_spec(changed, sweep_dir, extend=False) is None  # the extended spec is now the sweep's
