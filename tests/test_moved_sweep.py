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


def unsent_ops(sweep_dir: Path) -> list[dict]:
    """The spool's whole lines past its ack, read without touching the live files."""
    spool = sweep_dir / "tracking"
    try:
        acked = int((spool / "acked").read_text().strip() or 0)
    except (OSError, ValueError):
        acked = 0
    try:
        lines = (spool / "spool.jsonl").read_text().splitlines(keepends=True)
    except OSError:
        return []
    ops = []
    for line in lines:
        try:
            op = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            op = None
        if isinstance(op, dict) and op.get("seq", 0) > acked:
            ops.append(op)
    return ops


def test_a_folder_moved_with_writes_pending_sends_them_to_its_own_store_at_the_new_path(tmp_path):
    """Issue 33, 'sweep folder moved while MLflow writes are pending': the driver is killed while
    its spool holds unsent writes, the folder is moved, and the same sweep is run at its new path:
    every trial's run ends FINISHED with its model, all artifacts in the moved folder."""
    from test_faults_more import kill_group, wait_for

    path = write_spec(tmp_path, name="moving", max_concurrent=1, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}], axes={"model.recall": ["none", "standard"]})
    env = plugin_env()
    old_root = tmp_path / "results"
    sweep_dir = old_root / "moving"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(cli("run", str(path)), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  start_new_session=True)
        try:  # killed once a trial has its rows and the spool holds writes not yet sent
            wait_for(lambda: list((sweep_dir / "trials").glob("*.parquet")) and unsent_ops(sweep_dir), 300,
                     "a finished trial with unsent MLflow writes", driver, log, poll_s=0.01)
            os.killpg(driver.pid, signal.SIGKILL)
        finally:
            kill_group(driver)
    pending = len(unsent_ops(sweep_dir))
    assert pending > 0
    new_root = tmp_path / "moved" / "results"
    new_root.mkdir(parents=True)
    shutil.move(str(sweep_dir), str(new_root / "moving"))
    shutil.rmtree(old_root)
    moved = new_root / "moving"

    again = run_cli("run", str(path), "--results-dir", str(new_root), env=env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert unsent_ops(moved) == []
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    exp = client.get_experiment_by_name("moving")
    assert exp.artifact_location == (moved / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id], max_results=100)
    trials = {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}
    assert sorted(trials) == sorted(pd.read_parquet(moved / "results.parquet").trial_id.unique())
    assert {r.info.status for r in runs} == {"FINISHED"}, out
    for trial_id, run in trials.items():
        assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri() + "/")
        weights = [a.path for a in client.list_artifacts(run.info.run_id, "weights")]
        assert any(p.endswith(".pt") for p in weights), (trial_id, weights)
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert len(models) == len(trials) and all(m.artifact_location.startswith((moved / "mlartifacts").as_uri())
                                              for m in models), [m.artifact_location for m in models]
    assert not old_root.exists(), sorted(str(p) for p in old_root.rglob("*"))
    print(f"{pending} writes were pending at the kill; after the move: {len(trials)} runs FINISHED with models")
