"""A sweep folder is self-contained (issue 32 item 1; issue 33, 'sweep folder moved'): MLflow's
store recorded absolute artifact locations, so a copied folder showed the original's artifacts
("No Artifacts Recorded" once it was gone), and `report` and `eval` on the copy wrote into the
original. Here a finished sweep is copied, the original removed, and `ui` (its REST API, as the UI
reads it), `report`, `eval` and `run` work on the copy: every artifact is found in the copy and
nothing is written at the old path."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_BASE, write_spec
from mlflow_server import free_port
from test_faults_more import REPO, cli, plugin_env, run_cli

pytestmark = pytest.mark.slow


def rest(base: str, endpoint: str, payload: dict | None = None, query: str = "") -> dict:
    """One call of MLflow's REST API (POST with a JSON body, or GET with a query)."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}{query}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def wait_until_serving(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "ui exited"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("ui never served")


def test_a_copied_sweep_serves_reads_and_writes_only_its_own_artifacts(tmp_path):
    path = write_spec(tmp_path, name="travel", max_concurrent=2, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}], axes={"model.recall": ["none", "standard"]})
    env = plugin_env()
    first = run_cli("run", str(path), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    old_root = tmp_path / "results"
    new_root = tmp_path / "elsewhere" / "results"
    shutil.copytree(old_root / "travel", new_root / "travel", symlinks=True)
    shutil.rmtree(old_root)
    copy = new_root / "travel"
    trials = sorted(pd.read_parquet(copy / "results.parquet").trial_id.unique())
    assert len(trials) == 2

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ui = subprocess.Popen(cli("ui", "travel", "--results-dir", str(new_root), "--port", str(port)),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                          start_new_session=True)
    try:
        wait_until_serving(base, ui)
        (exp,) = [e for e in rest(base, "experiments/search", {"max_results": 100})["experiments"]
                  if e["name"] == "travel"]
        assert exp["artifact_location"] == (copy / "mlartifacts").as_uri()
        runs = rest(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        by_trial = {t["value"]: r for r in runs for t in r["data"].get("tags", []) if t["key"] == "trial_id"}
        assert sorted(by_trial) == trials
        served: dict[str, list[str]] = {}
        for trial_id, run in by_trial.items():
            assert run["info"]["artifact_uri"].startswith((copy / "mlartifacts").as_uri() + "/")
            listing = rest(base, "artifacts/list", query=f"?run_id={run['info']['run_id']}")
            served[trial_id] = sorted(f["path"] for f in listing.get("files", []))
            assert "config.json" in served[trial_id] and "weights" in served[trial_id], served
            weights = rest(base, "artifacts/list", query=f"?run_id={run['info']['run_id']}&path=weights")
            assert any(f["path"].endswith(".pt") and int(f.get("file_size", 0)) > 0 for f in weights["files"]), weights
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)

    report = run_cli("report", "travel", "--results-dir", str(new_root), env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "not logged to MLflow" not in report.stdout + report.stderr
    parent = [r for r in runs if not any(t["key"] == "trial_id" for t in r["data"].get("tags", []))]
    (parent_id,) = [r["info"]["run_id"] for r in parent]
    assert (copy / "mlartifacts" / parent_id / "artifacts" / "report.md").is_file()

    evaluated = run_cli("eval", "travel", "--results-dir", str(new_root), "--sizes", "24", env=env)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    table = pd.read_parquet(copy / "results.parquet")
    assert set(table[table.split == "ood_24"].trial_id) == set(trials)

    again = run_cli("run", str(path), "--results-dir", str(new_root), env=env)
    assert again.returncode == 0, again.stdout + again.stderr

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    for trial_id, run in by_trial.items():
        assert client.get_metric_history(run["info"]["run_id"], "acc/ood_24"), trial_id  # eval's metrics arrived
        local = client.download_artifacts(run["info"]["run_id"], "config.json", str(tmp_path / f"dl-{trial_id}"))
        assert json.loads(Path(local).read_text())
    assert not old_root.exists(), sorted(str(p) for p in old_root.rglob("*"))  # nothing written at the old path
    print(f"served from the copy: {served}")
