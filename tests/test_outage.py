"""The table first, the tracker second (issue 16, faults 3 and 7 of the report): a real `mlflow
server` killed mid-sweep and restarted, real Ray, the real CLI. Every row reaches Parquet while the
server is down, and afterwards every metric point is in MLflow exactly once. A second results
folder with the same sweep name on the same server gets its own experiment and artifacts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TINY_BASE, write_spec
from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_ADDRESS": "", "FPR_TASK_PLUGINS": "fault_tasks", "FPR_TRACKING_DRAIN_S": "240",
       "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
STEPS = list(range(10, 61, 10))


def _experiment_runs(client: MlflowClient, exp_id: str) -> dict[str, object]:
    return {r.data.tags.get("trial_id", "parent"): r for r in client.search_runs([exp_id], max_results=100)}


def _wait(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the driver ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_server_killed_mid_sweep_loses_nothing_and_folders_never_share_runs(tmp_path):
    hold = tmp_path / "hold"
    hold.touch()  # the second trial stalls at step 30 until the server is down
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 60, "log_every": 10, "checkpoint_every": 20}}
    path = write_spec(tmp_path, name="outage", base=base, max_concurrent=1, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]},
        {"name": "held_parity", "params": {"hold": str(hold)}, "train_size": 8, "ood_sizes": [16]}])
    server = MlflowServer(tmp_path / "server").start()
    sweep_dir = tmp_path / "results" / "outage"
    log_path = tmp_path / "driver.log"
    try:
        with open(log_path, "w") as log:
            driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--tracking-uri",
                                       server.uri], stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO,
                                      start_new_session=True)
        try:
            _wait(lambda: len(list((sweep_dir / "trials").glob("*.parquet"))) == 1, 300, driver)
            server.kill()  # mid-sweep: one trial done, one training
            hold.unlink()
            _wait(lambda: len(list((sweep_dir / "trials").glob("*.parquet"))) == 2, 300, driver)
            assert driver.poll() is None  # the rows are in while MLflow is down; the driver waits to send
            server.start()
            restarted = time.monotonic()
            assert driver.wait(timeout=300) == 0, log_path.read_text()[-3000:]
            recover_seconds = time.monotonic() - restarted
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        out = log_path.read_text()
        assert "Traceback" not in out and "took" not in out, out[-3000:]  # no Tune "operation took N s"
        df = pd.read_parquet(sweep_dir / "results.parquet")
        assert len(df) == 4 and set(df.status) == {"ok"}

        client = MlflowClient(server.uri)
        first = client.get_experiment_by_name("outage")
        runs = _experiment_runs(client, first.experiment_id)
        assert sorted(runs) == sorted([*df.trial_id.unique(), "parent"])
        assert {r.info.status for r in runs.values()} == {"FINISHED"}
        for trial_id in df.trial_id.unique():
            run_id = runs[trial_id].info.run_id
            assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == STEPS
            assert len(client.get_metric_history(run_id, "acc/id")) == 1
            assert {a.path for a in client.list_artifacts(run_id)} >= {"config.json"}
        print(f"outage: exit 0, {len(df)} rows, {len(runs)} runs, MLflow complete {recover_seconds:.1f} s "
              "after the server came back")

        # Server-tracked experiments keep artifacts under the server's artifact root, one folder
        # per experiment and run, so two sweeps on one server never share an artifact path.
        artifacts = {tid: _served_file(server, runs[tid].info.artifact_uri, "config.json")
                     for tid in df.trial_id.unique()}
        stamps = {tid: p.stat().st_mtime for tid, p in artifacts.items()}
        other = tmp_path / "other"  # the same sweep name in a second results folder, same server
        again = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--tracking-uri",
                                server.uri, "--results-dir", str(other)], capture_output=True, text=True,
                               timeout=400, env=ENV, cwd=REPO)
        assert again.returncode == 0, again.stdout + again.stderr
        exps = [e for e in client.search_experiments() if e.name.startswith("outage")]
        assert len(exps) == 2
        second = next(e for e in exps if e.experiment_id != first.experiment_id)
        assert second.artifact_location != first.artifact_location  # its own artifact location
        assert len(_experiment_runs(client, second.experiment_id)) == 3
        assert _experiment_runs(client, first.experiment_id).keys() == runs.keys()  # untouched
        assert {tid: p.stat().st_mtime for tid, p in artifacts.items()} == stamps  # not overwritten
    finally:
        server.kill()


def _served_file(server: MlflowServer, artifact_uri: str, name: str) -> Path:
    """Where the tracking server keeps a run's artifact on disk: its artifact root (a file: URI here)."""
    from urllib.parse import urlparse

    path = Path(urlparse(artifact_uri).path) / name
    assert path.is_relative_to(server.directory.resolve()), artifact_uri  # the server's folder, not ours
    return path
