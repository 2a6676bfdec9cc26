"""Faults a sweep must survive, injected for real: trials that raise (retried, then recorded as
failed), trials that diverge (recorded, never retried), an unreachable tracking server (refused
before anything runs), and many writers finishing at once in one results dir (no partial file is
ever visible). Failures come from tests/fault_tasks.py, loaded through FPR_TASK_PLUGINS.

The driver SIGKILL + resume fault lives in tests/test_resume.py. Heavy imports (mlflow, torch via
fault_tasks) stay inside the tests: the writer processes below re-import this module.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import write_spec

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def plugin_env(**extra: str) -> dict[str, str]:
    """The CLI's environment: fault tasks importable by the driver and its local Ray workers."""
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "FPR_TASK_PLUGINS": "fault_tasks", "RAY_ADDRESS": "", **extra}


def run_cli(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def flaky(counter: Path, fail_attempts: int, **entry) -> dict:
    return {"name": "flaky_parity", "params": {"counter": str(counter), "fail_attempts": fail_attempts},
            "train_size": 8, "ood_sizes": [16], **entry}


DIVERGE = {"model.outer_norm": "none", "model.pre_norm": False, "model.spectral": 8.0,
           "train.lr": 1.0e4, "train.warmup": 0}
"""Expansive spectral regime, no outer norm, lr 1e4: the loss is NaN within the first steps."""


@pytest.mark.slow
def test_raising_trials_retry_then_fail_and_diverged_trials_are_not_retried(tmp_path):
    from fault_tasks import attempts
    from mlflow import MlflowClient

    counters = {k: tmp_path / f"{k}.attempts" for k in ("always", "once", "diverge")}
    path = write_spec(tmp_path, name="faults", max_failures=1, tasks=[
        flaky(counters["always"], -1), flaky(counters["once"], 1),
        flaky(counters["diverge"], 0, overrides=DIVERGE)])
    done = run_cli("run", str(path), env=plugin_env())
    out = done.stdout + done.stderr
    assert done.returncode == 1, out

    assert attempts(counters["always"]) == 2  # first try + max_failures retries, then given up
    assert attempts(counters["once"]) == 2  # failed once, succeeded on the retry
    assert attempts(counters["diverge"]) == 1  # divergence is a result, not an error: no retry

    sweep_dir = tmp_path / "results" / "faults"
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df) == 3 * 2 and not df.duplicated(["trial_id", "split"]).any()
    by_counter = {k: df[df.task_params.str.contains(f"{k}.attempts")] for k in counters}
    failed, ok, diverged = by_counter["always"], by_counter["once"], by_counter["diverge"]
    assert set(failed.status) == {"failed"} and failed.error.str.contains("injected fault on attempt 2").all()
    assert set(ok.status) == {"ok"} and ok.exact_acc.notna().all()
    assert set(diverged.status) == {"diverged"} and diverged.error.str.contains("non-finite").all()
    failed_id = failed.trial_id.iloc[0]
    assert f"failed {failed_id}" in done.stderr and "InjectedFault" in done.stderr

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("faults")
    children = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id], max_results=100)
                if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == sorted(df.trial_id.unique())  # one child run per trial, retries included
    assert children[failed_id].info.status == "FAILED"
    assert "injected fault" in children[failed_id].data.tags["error"]
    assert children[ok.trial_id.iloc[0]].info.status == "FINISHED"
    assert children[diverged.trial_id.iloc[0]].data.tags["status"] == "diverged"


def test_task_plugins_register_and_bad_ones_are_named(monkeypatch):
    from fpr_core import tasks

    monkeypatch.setenv(tasks.PLUGINS_ENV, "fault_tasks")
    assert "flaky_parity" in tasks.TASK_NAMES and tasks.TASK_NAMES[:5] == ("prefix_sums", "mazes", "sudoku",
                                                                           "chess", "state_tracking")
    assert tasks.get_task("flaky_parity", counter="x").params["fail_attempts"] == 0
    monkeypatch.setenv(tasks.PLUGINS_ENV, "fault_tasks,no_such_module_xyz")
    with pytest.raises(ImportError, match="FPR_TASK_PLUGINS: cannot import task plugin module 'no_such_module_xyz'"):
        tasks.task_class("prefix_sums")
    monkeypatch.delenv(tasks.PLUGINS_ENV)
    assert "flaky_parity" not in tasks.TASK_NAMES


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_tracking_server_stops_before_any_trial(tmp_path):
    path = write_spec(tmp_path, name="offline", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    uri = f"http://127.0.0.1:{_closed_port()}"
    done = run_cli("run", str(path), "--tracking-uri", uri, env=plugin_env(), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{uri} is not reachable" in done.stderr and "Traceback" not in done.stderr
    assert "Ray" not in done.stdout  # refused before Ray started
    assert not (tmp_path / "results" / "offline").exists()  # no sweep dir, no trial dir


# ---------------------------------------------------------------- concurrent writers

THREADS, TRIALS_PER_THREAD = 3, 6


def _sweep_driver(sweep_dir: str, start: "multiprocessing.synchronize.Barrier") -> None:
    """One sweep's driver: THREADS trials finish at the same moment, again and again; each writes
    its rows file and re-collects results.parquet; a last collect at the end (as run_sweep does)."""
    from orchestrator.store import parquet

    sweep = Path(sweep_dir)

    def finish_trials(thread: int) -> None:
        for i in range(TRIALS_PER_THREAD):
            trial_id = f"t{thread}x{i:02d}"
            rows = [{"sweep": sweep.name, "trial_id": trial_id, "task": "prefix_sums", "variant": "v",
                     "seed": 0, "split": split, "size": size, "status": "ok", "exact_acc": 0.5,
                     "instance_iters": [1.0] * 64} for split, size in (("id", 8), ("ood_16", 16))]
            parquet.write_trial_rows(sweep, trial_id, rows)
            parquet.collect(sweep)

    start.wait()
    threads = [threading.Thread(target=finish_trials, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parquet.collect(sweep)


def _read_everything(root: Path, stop: threading.Event, seen: dict, errors: list) -> None:
    while not stop.is_set():
        for path in root.rglob("*.parquet"):
            try:
                # One open handle pins one file version. pq.read_table(path) opens the path twice
                # (footer, then data), so across an os.replace it can mix two complete files.
                with open(path, "rb") as handle:
                    table = pq.read_table(handle)
            except FileNotFoundError:  # replaced between listing and opening: not a torn file
                continue
            except Exception as e:  # a partial or corrupt file
                errors.append(f"{path}: {type(e).__name__}: {e}")
                continue
            if path.name != "results.parquet" and table.num_rows != 2:
                errors.append(f"{path}: {table.num_rows} rows")
            seen[path] = seen.get(path, 0) + 1


def test_two_sweeps_writing_one_results_dir_never_expose_partial_files(tmp_path):
    root = tmp_path / "results"
    sweeps = [root / "sweep-a", root / "sweep-b"]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(sweeps) + 1)
    procs = [ctx.Process(target=_sweep_driver, args=(str(s), start)) for s in sweeps]
    for p in procs:
        p.start()
    seen: dict = {}
    errors: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_read_everything, args=(root, stop, seen, errors))
    reader.start()
    start.wait(timeout=120)
    for p in procs:
        p.join(timeout=120)
    stop.set()
    reader.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert not errors, errors[:5]
    assert sum(seen.values()) > THREADS * TRIALS_PER_THREAD  # the reader really read while writers ran
    for s in sweeps:
        df = pd.read_parquet(s / "results.parquet")
        assert len(df) == THREADS * TRIALS_PER_THREAD * 2
        assert not df.duplicated(["trial_id", "split"]).any() and set(df.sweep) == {s.name}
        assert not [p for p in (s / "trials").iterdir() if p.name.startswith(".")]  # no temp files left
