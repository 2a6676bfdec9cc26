"""A driver stopped by SIGTERM, a second driver on the same sweep, and the resume after both:
real Ray, real MLflow (SQLite), the real CLI in subprocesses (issue 16, faults 1, 2 and 11)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TINY_BASE, write_spec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_ADDRESS": "", "FPR_TASK_PLUGINS": "fault_tasks",
       "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the driver ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _histories(client: MlflowClient, exp_id: str) -> dict[str, list[int]]:
    out = {}
    for run in client.search_runs([exp_id], max_results=100):
        if "trial_id" in run.data.tags:
            out[run.data.tags["trial_id"]] = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    return out


def test_sigterm_stops_like_ctrl_c_one_driver_per_sweep_and_the_resume_is_exact(spec_dir):
    hold = spec_dir / "hold"
    hold.touch()  # the second trial stalls at its 3rd logged step (30) until this file goes
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 60, "log_every": 10, "checkpoint_every": 20}}
    path = write_spec(spec_dir, name="stops", base=base, max_concurrent=1, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]},
        {"name": "held_parity", "params": {"hold": str(hold)}, "train_size": 8, "ood_sizes": [16]}])
    sweep_dir = spec_dir / "results" / "stops"
    trials = sweep_dir / "trials"
    log_path = spec_dir / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=ENV, cwd=REPO, start_new_session=True)
    try:
        _wait_for(lambda: list(trials.glob("*.parquet")) and "running" in _read(sweep_dir / "live.json"), 300, driver)

        second = cli("run", str(path), timeout=120)  # fault 1: a second driver on the same sweep
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {driver.pid}" in second.stderr and "one driver per sweep" in second.stderr
        status = cli("status", "stops", "--results-dir", str(spec_dir / "results"))
        assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
        report = cli("report", "stops", "--results-dir", str(spec_dir / "results"))
        assert report.returncode == 0, report.stdout + report.stderr
        assert len(list(trials.glob("*.parquet"))) == 1

        started = time.monotonic()
        driver.send_signal(signal.SIGTERM)  # fault 2: what a scheduler or `timeout` sends
        assert driver.wait(timeout=180) == 1
        stop_seconds = time.monotonic() - started
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    out = log_path.read_text()
    assert "stopped: SIGTERM received" in out and "unfinished" in out and "Traceback" not in out, out[-3000:]
    finished = len(list(trials.glob("*.parquet")))
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert df.trial_id.nunique() == finished and len(df) == 2 * finished
    assert not (sweep_dir / "driver.lock").exists() and not (sweep_dir / "live.json").exists()
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stops")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert "RUNNING" not in {r.info.status for r in runs}
    assert {r.info.status for r in runs if r.data.tags.get("fpr.role") == "sweep"} == {"KILLED"}
    print(f"SIGTERM: exit 1 after {stop_seconds:.1f} s, {finished} trials' rows, {len(runs)} runs")

    hold.unlink()
    resumed = cli("run", str(path), timeout=600)  # fault 11: progress and histories exact
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    counts = [(int(a), int(b)) for a, b in re.findall(r"\[(\d+)/(\d+)\]", resumed.stdout)]
    assert counts and all(done <= total == 2 for done, total in counts), resumed.stdout
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df) == 4 and df.trial_id.nunique() == 2 and set(df.status) == {"ok"}
    histories = _histories(client, exp.experiment_id)
    assert len(histories) == 2
    for trial_id, steps in histories.items():  # each step once, though the resume re-reported step 30
        assert sorted(steps) == list(range(10, 61, 10)), (trial_id, steps)
    assert {r.info.status for r in client.search_runs([exp.experiment_id], max_results=100)} == {"FINISHED"}
