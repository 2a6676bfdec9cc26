"""Resume: SIGKILL the driver after its first trial finished, run the same command again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TINY_BASE, write_spec

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def _kill_group(pid: int) -> None:
    """The killed driver's own local Ray (raylet, GCS, workers) shares its process group."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_while_restorable(driver: subprocess.Popen, tune_dir, deadline: float) -> None:
    """SIGKILL the driver's process group at a moment when Tune's saved state is whole and signed:
    what `fpr-sweep run` restores (driver.restorable). A kill at a random moment can land while Tune
    rewrites its state, or after Tune's last write and before the driver's signer re-signed it (one
    pass every trust.SIGN_EVERY_S, longer than these trials take); the next run then sets the state
    aside and restarts the unfinished trials, and the restore path is tested only by chance.
    So: freeze the whole group (SIGSTOP: nothing writes), and if the state is whole JSON, sign it
    as the driver's next signer pass would (same key, same function) and kill the group frozen;
    if a write was cut in the middle, let it run a moment and try again."""
    from orchestrator.run import trust
    from orchestrator.run.driver import experiment_state_readable, restorable

    while time.time() < deadline and driver.poll() is None:
        states = sorted(tune_dir.glob("*/experiment_state-*.json"))
        os.killpg(driver.pid, signal.SIGSTOP)
        if states and experiment_state_readable(str(states[-1].parent)):
            trust.sign(states[-1].parent)
            assert restorable(str(states[-1].parent)) is None
            os.killpg(driver.pid, signal.SIGKILL)
            return
        os.killpg(driver.pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("Tune's state was never whole while the driver ran")


@pytest.mark.parametrize("truncate_state", [False, True], ids=["state-intact", "state-truncated"])
def test_killed_sweep_resumes_without_loss_or_duplicates(spec_dir, truncate_state):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 20}}
    path = write_spec(spec_dir, name="resume", base=base, max_concurrent=1,
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"model.recall": ["none", "standard", "internal"]})
    sweep_dir = spec_dir / "results" / "resume"
    trials_dir = sweep_dir / "trials"
    env = {**os.environ, "RAY_ADDRESS": ""}
    import orchestrator.run.driver  # noqa: F401  (imports Ray: seconds the kill below must not wait)
    with open(spec_dir / "first.log", "w") as log:
        driver = subprocess.Popen(_cli("run", str(path)), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=env)
        try:
            deadline = time.time() + 240
            while not list(trials_dir.glob("*.parquet")) and time.time() < deadline and driver.poll() is None:
                time.sleep(0.2)
            _kill_while_restorable(driver, sweep_dir / "tune", deadline=time.time() + 120)
            driver.wait(timeout=30)
        finally:
            _kill_group(driver.pid)
    finished_before = {p.stem: pd.read_parquet(p).finished_at.tolist() for p in trials_dir.glob("*.parquet")}
    assert 1 <= len(finished_before) < 3, (spec_dir / "first.log").read_text()
    assert not (sweep_dir / "results.parquet").exists()  # the driver died before collecting
    states = sorted((sweep_dir / "tune").glob("*/experiment_state-*.json"))
    assert states, "Tune saved its experiment state before the kill"
    if truncate_state:  # what a SIGKILL in the middle of Tune rewriting its state leaves behind
        states[-1].write_text(states[-1].read_text()[:40])

    second = subprocess.run(_cli("run", str(path)), capture_output=True, text=True, timeout=400,
                            start_new_session=True, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    if truncate_state:
        assert "unreadable" in second.stdout and "resuming Tune experiment" not in second.stdout
    else:  # killed while the state was whole and signed: Tune restores it
        assert "resuming Tune experiment" in second.stdout and "unreadable" not in second.stdout, second.stdout

    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df) == 3 * 2 and df.trial_id.nunique() == 3
    assert not df.duplicated(["trial_id", "split"]).any() and set(df.status) == {"ok"}
    for trial_id, stamps in finished_before.items():  # finished trials were not trained again
        assert df[df.trial_id == trial_id].finished_at.tolist() == stamps

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sum(r.data.tags.get("fpr.role") == "sweep" for r in runs) == 1
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(df.trial_id.unique())
    assert all(r.info.status == "FINISHED" and "acc/ood_16" in r.data.metrics for r in children)

    third = subprocess.run(_cli("run", str(path)), capture_output=True, text=True, timeout=120, env=env)
    assert third.returncode == 0 and "Ray" not in third.stdout  # all done: nothing starts
    assert pd.read_parquet(sweep_dir / "results.parquet").equals(df)
