"""Issue 33: nothing lost under the faults that schedulers and people cause. Each test injects
one fault of the issue's table for real (real Ray, a real SQLite MLflow store, real files, real
signals) and checks what happens now; docs/faults.md lists them.

Failures come from tests/fault_tasks.py and tests/fault_tasks_more.py, loaded through
FPR_TASK_PLUGINS.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_BASE, write_spec

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def plugin_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "FPR_TASK_PLUGINS": "fault_tasks,fault_tasks_more",
            "RAY_ADDRESS": "", **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def run_cli(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                          start_new_session=True)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             poll_s: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()}" if log else ""))


def kill_group(proc: subprocess.Popen) -> None:
    """A driver we started in its own session, with the local Ray it started (same group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def tune_state_has_running_trial(sweep_dir: Path) -> bool:
    for state in (sweep_dir / "tune").glob("*/experiment_state-*.json"):
        try:
            if "RUNNING" in state.read_text():
                return True
        except OSError:
            pass
    return False


# ---------------------------------------------------------------- finished rows are final

@pytest.mark.slow
def test_a_failed_retry_never_replaces_a_finished_trials_ok_rows(tmp_path):
    """Issue 33, row 2: kill -9 right after a trial's rows file (Tune's saved state still has the
    trial running), resume, and the retrained attempt fails: the ok rows stay."""
    from fault_tasks import attempts

    counter, hold, hold_other = tmp_path / "retry.attempts", tmp_path / "hold", tmp_path / "hold-other"
    hold.touch()
    hold_other.touch()  # a second trial still training keeps the run resumable
    path = write_spec(tmp_path, name="final", max_failures=0, max_concurrent=2, tasks=[
        {"name": "retry_fails", "params": {"counter": str(counter), "hold": str(hold)},
         "train_size": 8, "ood_sizes": [16]},
        {"name": "held_parity", "params": {"hold": str(hold_other), "after": 1}, "train_size": 8,
         "ood_sizes": [16]}])
    sweep_dir = tmp_path / "results" / "final"
    log = tmp_path / "first.log"
    env = plugin_env()
    with open(log, "w") as out:
        driver = subprocess.Popen(cli("run", str(path)), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  start_new_session=True)
        try:
            # Tune saves its state with the trial RUNNING (the trial stalls while `hold` exists) ...
            wait_for(lambda: tune_state_has_running_trial(sweep_dir), 120, "Tune's state with a running trial",
                     driver, log)
            hold.unlink()
            # ... and the driver dies right after the trial's rows file, before Tune saves again.
            wait_for(lambda: list((sweep_dir / "trials").glob("*.parquet")), 120, "the rows file", driver, log,
                     poll_s=0.002)
            os.killpg(driver.pid, signal.SIGKILL)
        finally:
            kill_group(driver)
    (rows_file,) = (sweep_dir / "trials").glob("*.parquet")
    before = pd.read_parquet(rows_file)
    assert set(before.status) == {"ok"} and set(before.task) == {"retry_fails"}, log.read_text()
    hold_other.unlink()

    second = run_cli("run", str(path), env=env)
    out = second.stdout + second.stderr
    assert attempts(counter) == 2, out  # Tune restored the trial as running and trained it again: it failed
    after = pd.read_parquet(rows_file)
    assert set(after.status) == {"ok"}, out
    assert after.finished_at.tolist() == before.finished_at.tolist()  # the same rows, not rewritten
    assert "its finished rows are kept" in out
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(table.status) == {"ok"} and len(table) == 4 and table.trial_id.nunique() == 2
    assert second.returncode == 0, out


# ---------------------------------------------------------------- fencing

def live_running(sweep_dir: Path) -> int:
    try:
        return sum(t.get("status") == "running" for t in json.loads((sweep_dir / "live.json").read_text())["trials"].values())
    except (OSError, ValueError, KeyError, AttributeError):
        return 0


def mlflow_children(sweep_dir: Path, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_a_driver_woken_after_losing_its_lock_stops_before_its_next_write(tmp_path):
    """Issue 33, row 1: a driver SIGSTOPped past its lease, a second driver takes the sweep, then
    SIGCONT. The first exits 1 at once, naming the new holder, without another write; the second
    finishes every trial; no MLflow point is logged twice and each trial has one run."""
    from orchestrator.sweep.lock import read_holder

    hold = tmp_path / "hold"
    hold.touch()
    path = write_spec(tmp_path, name="fenced", max_concurrent=2, tasks=[
        {"name": "held_parity", "params": {"hold": str(hold), "after": 1}, "train_size": 8, "ood_sizes": [16]}],
        axes={"model.recall": ["none", "standard"]})
    sweep_dir = tmp_path / "results" / "fenced"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    with open(log1, "w") as out1, open(log2, "w") as out2:
        first = subprocess.Popen(cli("run", str(path)), stdout=out1, stderr=subprocess.STDOUT, cwd=REPO,
                                 env=plugin_env(FPR_LOCK_REFRESH_S="1"), start_new_session=True)
        second = None
        try:
            wait_for(lambda: live_running(sweep_dir) == 2, 180, "two running trials", first, log1)
            time.sleep(2)  # a few metric points into the spool
            first.send_signal(signal.SIGSTOP)
            time.sleep(3)
            second = subprocess.Popen(cli("run", str(path)), stdout=out2, stderr=subprocess.STDOUT, cwd=REPO,
                                      env=plugin_env(FPR_LOCK_EXPIRY_S="2"), start_new_session=True)
            wait_for(lambda: (read_holder(sweep_dir) or first).pid == second.pid, 60, "the takeover", second, log2)
            hold.unlink()
            first.send_signal(signal.SIGCONT)
            woke = time.time()
            first.wait(timeout=60)
            stopped_in = time.time() - woke
            assert second.wait(timeout=400) == 0, log2.read_text()
        finally:
            for proc in (first, second):
                if proc is not None:
                    os.kill(proc.pid, signal.SIGCONT) if proc.poll() is None else None
                    kill_group(proc)
    text1 = log1.read_text()
    assert first.returncode == 1, text1
    assert f"lost {sweep_dir / 'driver.lock'} to pid {second.pid}" in text1 and "epoch 2" in text1
    assert stopped_in < 20, stopped_in
    assert "trials:" not in text1  # no summary: it is the other driver's sweep now
    assert "took over the lock of pid" in log2.read_text()

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == 4 and set(table.status) == {"ok"}
    client, children = mlflow_children(sweep_dir, "fenced")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(table.trial_id.unique())
    assert all(r.info.status == "FINISHED" for r in children)
    for run in children:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["trial_id"], key, sorted(steps))
