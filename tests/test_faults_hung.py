"""Issue 33, items 8 and 9: hung trials, a lost Ray, and trials too big to fit. Each test runs the
real component (real Ray, a real SQLite MLflow store, real files and signals; docs/faults.md).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_spec
from tmpfs import fill, mounted_tmpfs
from test_faults_more import mlflow_children, plugin_env, run_cli


# ---------------------------------------------------------------- max_trial_minutes

def test_max_trial_minutes_is_validated_and_off_by_default(tmp_path):
    from orchestrator.sweep.spec import SpecError, load_spec

    base = {"name": "limit", "tasks": [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}]}
    assert load_spec(write_spec(tmp_path, **base)).max_trial_minutes is None
    assert load_spec(write_spec(tmp_path, **base, max_trial_minutes=0.5)).max_trial_minutes == 0.5
    for bad in (0, -1, "soon"):
        with pytest.raises(SpecError, match="max_trial_minutes"):
            load_spec(write_spec(tmp_path, **base, max_trial_minutes=bad))


def test_the_deadline_raises_only_past_its_limit():
    from orchestrator.run.trainable import Deadline, TrialTimedOut

    now = [0.0]
    off, on = Deadline(None, clock=lambda: now[0]), Deadline(3.0, clock=lambda: now[0])
    now[0] = 2.9
    assert on() is False and off() is False
    now[0] = 3.1
    assert off() is False
    with pytest.raises(TrialTimedOut, match="max_trial_minutes"):
        on()


@pytest.mark.slow
def test_a_trial_past_max_trial_minutes_ends_timed_out_with_its_rows(tmp_path):
    """Issue 33, 'a trial that never ends': one trial of 10^6 steps beside a 10-step one (the same task at another OOD size), with
    max_trial_minutes 0.2 (12 s). The long one ends timed_out (rows written, MLflow run ended), the
    short one finishes ok, and the run exits 1 (a trial has no results) without waiting."""
    path = write_spec(tmp_path, name="hung", max_failures=0, max_concurrent=2, max_trial_minutes=0.2, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16], "overrides": {"train.steps": 1_000_000}},
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [24]}])
    started = time.time()
    done = run_cli("run", str(path), env=plugin_env(), timeout=300)
    took = time.time() - started
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    sweep_dir = tmp_path / "results" / "hung"
    table = pd.read_parquet(sweep_dir / "results.parquet")
    by_trial = table.groupby("trial_id").status.agg(lambda s: ",".join(sorted(set(s)))).sort_values()
    assert sorted(by_trial) == ["ok", "timed_out"], out
    timed = table[table.status == "timed_out"]
    assert timed.error.str.contains("max_trial_minutes").all()
    assert (timed.train_seconds >= 12).all() and (timed.train_seconds < 60).all(), timed.train_seconds
    _client, children = mlflow_children(sweep_dir, "hung")
    runs = {r.data.tags["trial_id"]: r for r in children}
    assert len(runs) == 2
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {r.data.tags.get("status") for r in runs.values()} == {"timed_out", "ok"}
    print(f"timed-out run took {took:.1f} s in all")


def test_the_cut_off_ends_a_thread_stuck_in_python_code_and_never_lands_after_its_block(monkeypatch):
    """What ends a hung evaluation: the CutOff raises TrialTimedOut in the thread of its block once
    the deadline has passed, even in a loop that checks no deadline; a block that ends in time is
    never interrupted afterwards."""
    import threading

    from orchestrator.run import trainable

    monkeypatch.setattr(trainable, "CUT_OFF_GRACE_S", 0.0)
    outcome: dict[str, object] = {}

    def hung() -> None:
        started = time.monotonic()
        try:
            with trainable.CutOff(trainable.Deadline(0.3)) as cut:
                while time.monotonic() - started < 30:  # "never" ends: no deadline checked here
                    time.sleep(0.01)
        except trainable.TrialTimedOut:
            outcome["cut_after_s"] = time.monotonic() - started
            outcome["fired"] = cut.fired

    thread = threading.Thread(target=hung)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and outcome["fired"] is True
    assert 0.3 <= outcome["cut_after_s"] < 5, outcome

    with trainable.CutOff(trainable.Deadline(0.3)) as quick:  # ends in time: nothing lands later
        pass
    time.sleep(0.6)
    assert quick.fired is False
    with trainable.CutOff(trainable.Deadline(None)) as off:  # no limit: no timer at all
        time.sleep(0.1)
    assert off.fired is False and off._timer is None


@pytest.mark.slow
def test_a_hung_evaluation_ends_timed_out_and_a_resume_does_not_train_it_again(tmp_path):
    """Issue 33, 'a trial that never ends', in evaluation: training ends, then evaluating the OOD
    split never does (hangs_in_eval). max_trial_minutes covers the whole trial: it ends timed_out
    with its rows, the trial beside it finishes ok. timed_out is final: a resume, even with Tune's
    saved state gone (where unfinished trials start again from scratch), does not train it again."""
    import shutil

    from fault_tasks import attempts

    counter = tmp_path / "hang.attempts"
    path = write_spec(tmp_path, name="evalhang", max_failures=1, max_concurrent=2, max_trial_minutes=0.25, tasks=[
        {"name": "hangs_in_eval", "params": {"counter": str(counter), "hang_size": 16}, "train_size": 8,
         "ood_sizes": [16]},
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [24]}])
    started = time.time()
    first = run_cli("run", str(path), env=plugin_env(), timeout=300)
    took = time.time() - started
    out = first.stdout + first.stderr
    assert first.returncode == 1, out
    sweep_dir = tmp_path / "results" / "evalhang"
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert sorted(table.groupby("task").status.agg(lambda s: ",".join(sorted(set(s))))) == ["ok", "timed_out"], out
    timed = table[table.status == "timed_out"]
    assert set(timed.task) == {"hangs_in_eval"} and len(timed) == 2  # its rows: one per split
    assert timed.error.str.contains("max_trial_minutes").all() and timed.error.str.contains("cut off").all(), \
        timed.error.tolist()
    assert (timed.train_seconds >= 15).all() and (timed.train_seconds < 60).all(), timed.train_seconds
    assert attempts(counter) == 1, out  # ended normally: no retry that would hang again
    _client, children = mlflow_children(sweep_dir, "evalhang")
    assert {r.data.tags.get("status"): r.info.status for r in children} == {"timed_out": "FINISHED", "ok": "FINISHED"}
    assert "timed_out" in first.stdout, out
    before = pd.read_parquet(sweep_dir / "results.parquet").sort_values(["trial_id", "split"])

    shutil.rmtree(sweep_dir / "tune")  # no Tune state to restore: unfinished trials would start afresh
    second = run_cli("run", str(path), env=plugin_env(), timeout=300)
    out2 = second.stdout + second.stderr
    assert attempts(counter) == 1, out2
    after = pd.read_parquet(sweep_dir / "results.parquet").sort_values(["trial_id", "split"])
    assert after.status.tolist() == before.status.tolist()
    assert after.finished_at.tolist() == before.finished_at.tolist()  # the same rows, not rewritten
    assert second.returncode == 1 and "Traceback" not in out2, out2  # still a trial without results
    print(f"first run {took:.1f} s; hung trial: {timed.error.iloc[0]}")


# ---------------------------------------------------------------- a lost raylet

@pytest.mark.slow
def test_a_killed_raylet_ends_the_driver_with_a_resume_hint_and_no_orphans(tmp_path):
    """Issue 33, 'raylet killed': the driver waited > 100 s while 2 orphaned workers kept training.
    Now it notices within seconds, kills the rest of its Ray (the workers too) and exits 1 with the
    command that resumes."""
    import psutil

    from test_faults_more import cli, kill_group, wait_for
    import subprocess

    path = write_spec(tmp_path, name="lostray", max_failures=0, max_concurrent=2, seeds=[0, 1], tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16], "overrides": {"train.steps": 1_000_000}}])
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(cli("run", str(path)), stdout=out, stderr=subprocess.STDOUT, env=plugin_env(),
                                  cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
        try:
            def training_workers():
                try:
                    kids = psutil.Process(driver.pid).children(recursive=True)
                    raylet = next(p for p in kids if p.name() == "raylet")
                    workers = [w for w in raylet.children(recursive=True) if "ImplicitFunc" in " ".join(w.cmdline())]
                    return (raylet, workers) if len(workers) == 2 else None
                except (psutil.Error, StopIteration):
                    return None

            raylet, workers = wait_for(training_workers, 150, "two training workers", driver, log, poll_s=0.5)
            session = os.getsid(raylet.pid)
            killed_at = time.time()
            raylet.kill()
            rc = driver.wait(timeout=60)
            took = time.time() - killed_at
        finally:
            kill_group(driver)
    text = log.read_text()
    assert rc == 1, text
    assert took < 45, (took, text)
    assert "raylet died" in text and "resume with: fpr-sweep run" in text, text
    time.sleep(1)
    alive = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], text
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.info["pid"]) == session and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.info["pid"])
        except (OSError, psutil.Error):
            pass
    assert left == [], text
    assert not (tmp_path / "results" / "lostray" / "driver.lock").exists()
    print(f"driver exited {took:.1f} s after the raylet was killed")


# ---------------------------------------------------------------- memory guard

@pytest.mark.parametrize("change", [{"model": {"dim": 1_000_000, "heads": 2}},
                                    {"model": {"dim": 256, "heads": 4}, "ood_sizes": [1_000_000]}],
                         ids=["dim-1e6", "eval-size-1e6"])
def test_validate_refuses_a_trial_that_cannot_fit_in_memory(tmp_path, change):
    """Issue 33, 'a spec with dim 10^6 ... eval size 10^6': validate said ok, and the trial was
    OOM-killed. Now validate prints the estimate and exits 2; --yes passes it with a warning."""
    from typer.testing import CliRunner

    from conftest import TINY_BASE
    from orchestrator.cli import app

    task = {"name": "prefix_sums", "train_size": 8, "ood_sizes": change.get("ood_sizes", [16])}
    base = {**TINY_BASE, "model": change["model"], "eval": {**TINY_BASE["eval"], "n_eval": 256}}
    path = write_spec(tmp_path, name="huge", base=base, tasks=[task])
    runner = CliRunner()
    refused = runner.invoke(app, ["validate", str(path)])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "needs an estimated" in text and "GiB" in text and "--yes" in text, text
    passed = runner.invoke(app, ["validate", str(path), "--yes"])
    assert passed.exit_code == 0, passed.output
    assert "warning" in passed.output and "ok (1 trials" in passed.output
    print(text)


def test_validate_passes_a_tiny_spec_and_the_estimate_counts_adamw_state(tmp_path):
    from typer.testing import CliRunner

    from fpr_core.config import ExperimentConfig
    from orchestrator.cli import app
    from orchestrator.run import memory
    from orchestrator.sweep.expand import resolve
    from orchestrator.sweep.plan import plan_sweep

    path = write_spec(tmp_path, name="tiny", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0
    cfg = ExperimentConfig.from_dict(resolve(next(iter(plan_sweep(path, False).cells()))).experiment_config())
    est = memory.estimate(cfg)
    assert est.weights_bytes == est.params * 4 * 4  # weights, gradients, AdamW's two moments (no EMA)
    assert est.total < 2**30


# ---------------------------------------------------------------- disk full at start

@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MB tmpfs, filled (skipped where tmpfs cannot be mounted)."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        fill(mount)
        yield mount


@pytest.mark.slow
@pytest.mark.parametrize("where", ["results", "ray-temp"])
def test_a_run_starting_on_a_full_disk_says_disk_full_and_leaves_no_folder(tmp_path, full_disk, where):
    """Issue 33, 'disk full at start' (a traceback) and 'Ray's temp dir on a full file system' (a
    103-line traceback that never said so, and a folder left): exit 2 with 'disk full', nothing left."""
    results = full_disk / "results" if where == "results" else tmp_path / "results"
    path = write_spec(tmp_path, name="full", results_dir=str(results),
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    env = plugin_env(**({"RAY_TMPDIR": str(full_disk)} if where == "ray-temp" else {}))
    done = run_cli("run", str(path), env=env, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "disk full" in out and "Traceback" not in out, out
    assert not results.exists(), sorted(p.name for p in results.rglob("*"))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
    print(out.strip().splitlines()[-1])
