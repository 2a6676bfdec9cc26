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


def saved_status(state: Path, task: str) -> str | None:
    """The status Tune's saved experiment state gives the trial of ``task`` (None: not whole, or no such trial)."""
    try:
        trials = [json.loads(t[0]) for t in json.loads(state.read_text())["trial_data"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return next((t.get("status") for t in trials if t.get("config", {}).get("cell", {}).get("task") == task), None)


def kill_while_restorable(driver: subprocess.Popen, sweep_dir: Path, running_task: str, timeout: float) -> None:
    """SIGKILL the driver's group at a moment when Tune's newest saved state is whole, shows the
    trial of ``running_task`` RUNNING, and is signed: what `fpr-sweep run` restores. A kill at a
    random moment can land after Tune's last write and before the driver's signer re-signed it (one
    pass every trust.SIGN_EVERY_S); the resume then sets the state aside and starts the trial from
    scratch, so the restored-as-running retry under test never happens. So (as tests/test_resume.py
    does): freeze the group (SIGSTOP: nothing writes), and if the state is whole with the trial
    running, sign it as the driver's next signer pass would (same key, same function) and kill the
    group frozen; else let it run a moment and look again."""
    from orchestrator.run import trust
    from orchestrator.run.driver import restorable

    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        os.killpg(driver.pid, signal.SIGSTOP)
        states = sorted((sweep_dir / "tune").glob("*/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        if states and saved_status(states[-1], running_task) == "RUNNING":
            trust.sign(states[-1].parent)
            assert restorable(str(states[-1].parent)) is None
            os.killpg(driver.pid, signal.SIGKILL)
            return
        os.killpg(driver.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"Tune's saved state never showed {running_task} running while the driver ran")


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
    import orchestrator.run.driver  # noqa: F401  (imports Ray: seconds the kill below must not wait)
    with open(log, "w") as out:
        driver = subprocess.Popen(cli("run", str(path)), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  start_new_session=True)
        try:
            # Tune saves its state with this trial RUNNING (it stalls while `hold` exists; any trial
            # RUNNING was not enough: under load the other one was, and this one went from pending
            # to finished between two saves, so no saved state ever showed it running) ...
            wait_for(lambda: any(saved_status(s, "retry_fails") == "RUNNING"
                                 for s in (sweep_dir / "tune").glob("*/experiment_state-*.json")),
                     120, "Tune's state with retry_fails running", driver, log)
            hold.unlink()
            # ... and the driver dies right after the trial's rows file, its saved state (signed,
            # whole) still showing the trial running.
            wait_for(lambda: list((sweep_dir / "trials").glob("*.parquet")), 120, "the rows file", driver, log,
                     poll_s=0.002)
            kill_while_restorable(driver, sweep_dir, "retry_fails", timeout=60)
        finally:
            kill_group(driver)
    (rows_file,) = (sweep_dir / "trials").glob("*.parquet")
    before = pd.read_parquet(rows_file)
    assert set(before.status) == {"ok"} and set(before.task) == {"retry_fails"}, log.read_text()
    hold_other.unlink()

    second = run_cli("run", str(path), env=env)
    out = second.stdout + second.stderr
    assert "resuming Tune experiment" in out and "not restored" not in out, out
    assert attempts(counter) == 2, out  # Tune restored the trial as running and trained it again: it failed
    after = pd.read_parquet(rows_file)
    assert set(after.status) == {"ok"}, out
    assert after.finished_at.tolist() == before.finished_at.tolist()  # the same rows, not rewritten
    assert "its finished rows are kept" in out
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(table.status) == {"ok"} and len(table) == 4 and table.trial_id.nunique() == 2
    assert second.returncode == 0, out


def test_tune_state_signed_in_another_folder_is_not_restored(tmp_path):
    """A sweep folder moved or copied since Tune saved its state: Ray 2.60 restores it, but a restored
    trial still checks its storage marker under the old folder and fails once that is gone. The
    state is set aside instead (its unfinished trials start again; finished ones keep their rows)."""
    import shutil

    from orchestrator.run import trust
    from orchestrator.run.driver import restorable

    old = tmp_path / "old" / "grid-x"
    old.mkdir(parents=True)
    (old / "experiment_state-1.json").write_text('{"trial_data": []}')
    trust.sign(old)
    assert trust.saved_elsewhere(old) is None and restorable(str(old)) is None
    new = tmp_path / "new" / "grid-x"
    shutil.copytree(old, new)
    assert trust.saved_elsewhere(new) == str(old.resolve())
    assert "moved or copied" in restorable(str(new)) and str(old.resolve()) in restorable(str(new))
    trust.sign(new)  # the next driver there signs it as its own
    assert trust.saved_elsewhere(new) is None


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
    from orchestrator.run.lock import read_holder

    hold = tmp_path / "hold"
    hold.touch()
    path = write_spec(tmp_path, name="fenced", max_concurrent=2, tasks=[
        {"name": "held_parity", "params": {"hold": str(hold), "after": 1}, "train_size": 8, "ood_sizes": [16]}],
        axes={"train.lr": [0.001, 0.002]})
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


# ---------------------------------------------------------------- one finished sweep, read many ways

@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """A real two-trial sweep, run once by the CLI; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    path = write_spec(root, name="done", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"train.lr": [0.001, 0.002]})
    done = run_cli("run", str(path), env=plugin_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return path, root / "results" / "done"


def copy_sweep(finished_sweep, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    spec, sweep_dir = finished_sweep
    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(sweep_dir, results / "done")
    text = spec.read_text().replace(str(sweep_dir.parent), str(results))
    (tmp_path / spec.name).write_text(text)
    return tmp_path / spec.name, results / "done"


def file_states(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(skip)}


NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
"""Root without its power to read any file: a file's mode applies to it as to any user."""


@pytest.mark.slow
def test_read_only_commands_move_and_rewrite_nothing(finished_sweep, tmp_path):
    """Issue 33, row "status by a user who cannot read one trial file": the good file stays where
    it is and the error says 'permission denied'; `status`, `run --dry-run` and `report` leave every
    results file as it was, even with results.parquet missing (the table is built in memory)."""
    spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    (sweep_dir / "results.parquet").unlink()
    unreadable = sorted((sweep_dir / "trials").glob("*.parquet"))[0]
    unreadable.chmod(0)
    before = file_states(sweep_dir)
    env = plugin_env()
    status = subprocess.run(NO_DAC + cli("status", str(sweep_dir)), capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"cannot read {unreadable}: permission denied" in status.stderr
    assert unreadable.exists() and not (sweep_dir / "trials" / ".corrupt").exists()
    unreadable.chmod(0o644)
    dry = run_cli("run", str(spec), "--dry-run", env=env, timeout=120)
    assert dry.returncode == 0 and "2 of them finished" in dry.stdout, dry.stdout + dry.stderr
    assert file_states(sweep_dir) == before
    report = run_cli("report", str(sweep_dir), env=env, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert not (sweep_dir / "results.parquet").exists()  # read, not rebuilt
    after = file_states(sweep_dir)  # report.md, its plots and MLflow are what report writes
    assert {k: after.get(k) for k in before if not k.startswith(("tracking", "mlflow.db", "mlartifacts"))} == {
        k: v for k, v in before.items() if not k.startswith(("tracking", "mlflow.db", "mlartifacts"))}


@pytest.mark.slow
def test_report_and_eval_during_a_live_run_leave_the_drivers_spool_alone(finished_sweep, tmp_path):
    """Issue 33, row "eval or report during a live run": with the sweep's lock held by a live
    process, `report` writes its report but leaves the spool (the driver's) untouched and says why
    MLflow got nothing; `eval` exits 2 naming the holder."""
    from test_lock import HOLD

    _spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(sweep_dir)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        spool = sweep_dir / "tracking"
        before = file_states(spool)
        report = run_cli("report", str(sweep_dir), env=plugin_env(), timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        assert "report not logged to MLflow: a driver is running this sweep" in report.stderr
        assert file_states(spool) == before
        evaluate = run_cli("eval", str(sweep_dir), "--sizes", "24", env=plugin_env(), timeout=300)
        assert evaluate.returncode == 2, evaluate.stdout + evaluate.stderr
        assert f"pid {holder.pid}" in evaluate.stderr and "Traceback" not in evaluate.stderr
        assert file_states(spool) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)


# ---------------------------------------------------------------- identity from the files

@pytest.mark.slow
def test_pooling_two_specs_is_refused_from_the_files_alone(finished_sweep, tmp_path):
    """Issue 33, row "changed spec with sweep.json deleted": the trial files' own spec hashes
    refuse the run (exit 2, before Ray starts); --extend still adds on purpose."""
    spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    (sweep_dir / "sweep.json").unlink()
    changed = spec.read_text().replace("steps: 10", "steps: 12")
    assert changed != spec.read_text()
    spec.write_text(changed)
    done = run_cli("run", str(spec), env=plugin_env(), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds 2 trials of spec hash" in done.stderr and "must not pool" in done.stderr
    assert "Ray" not in done.stdout and "Traceback" not in done.stderr


@pytest.mark.slow
def test_results_table_is_current_by_content_not_by_mtime(finished_sweep, tmp_path):
    """Issue 33, row "a trial file older than results.parquet": a trial file put back from a
    backup (older content, older mtime) makes the table stale; readers rebuild it from the files.
    Every trial file names its spec hash in its own metadata."""
    import pyarrow.parquet as pq

    from orchestrator.store import parquet

    _spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    trial = sorted((sweep_dir / "trials").glob("*.parquet"))[0]
    assert pq.read_schema(trial).metadata[parquet.SPEC_KEY] == pd.read_parquet(trial).spec_hash[0].encode()
    backup = tmp_path / "backup.parquet"
    backup.write_bytes(trial.read_bytes())
    rows = pq.read_table(trial).to_pylist()
    parquet.write_trial_rows(sweep_dir, trial.stem, [dict(r, exact_acc=0.125) for r in rows])
    parquet.collect(sweep_dir)
    assert set(parquet.read_current(sweep_dir).to_pandas().query("trial_id == @trial.stem").exact_acc) == {0.125}
    os.replace(backup, trial)  # `mv` from the backup: its mtime is older than results.parquet's
    old = (sweep_dir / "results.parquet").stat().st_mtime - 3600
    os.utime(trial, (old, old))
    again = parquet.read_current(sweep_dir).to_pandas().query("trial_id == @trial.stem")
    assert set(again.exact_acc) == {r["exact_acc"] for r in rows} and 0.125 not in set(again.exact_acc)


# ---------------------------------------------------------------- group signals

@pytest.mark.slow
@pytest.mark.parametrize("sender", ["kill-group", "timeout"])
def test_sigterm_to_the_process_group_stops_the_driver_cleanly(tmp_path, sender):
    """Issue 33, row "SIGTERM to the process group": what `timeout`, systemd, Slurm and Kubernetes
    send. Ray's own processes are outside the driver's group, so only the driver gets it: within
    10 s it prints its summary, releases its lock, ends the runs (trials KILLED) and exits 1."""
    from orchestrator.run.lock import read_holder

    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 100_000, "checkpoint_every": 50}}
    path = write_spec(tmp_path, name="grp", max_concurrent=2, base=base, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}], axes={"train.lr": [0.001, 0.002]})
    sweep_dir = tmp_path / "results" / "grp"
    log = tmp_path / "driver.log"
    limit = 150  # for Ray's start (33 s on a busy 2-core host) and both trials running
    command = cli("run", str(path))
    if sender == "timeout":
        # GNU timeout sends its TERM to the command and then to the command's process group, by the
        # same routine whether its limit ran out or it was itself sent TERM: the test sends TERM to
        # `timeout` once both trials run instead of waiting out a limit sized for a busy machine.
        command = ["timeout", "--preserve-status", "-s", "TERM", str(limit + 600), *command]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=plugin_env(),
                                start_new_session=True)
        try:
            wait_for(lambda: live_running(sweep_dir) == 2, limit - 5, "two running trials", proc, log)
            time.sleep(2)  # training, reporting, checkpointing
            signalled = time.time()
            if sender == "kill-group":
                os.killpg(proc.pid, signal.SIGTERM)  # kill -TERM -PGID
            else:
                os.kill(proc.pid, signal.SIGTERM)  # to `timeout`, which relays it as at its limit
            proc.wait(timeout=limit + 60)
            stopped_in = time.time() - signalled
        finally:
            if proc.poll() is None:
                kill_group(proc)
    text = log.read_text()
    assert proc.returncode == 1, text  # interrupted: trials unfinished
    print(f"{sender}: stopped {stopped_in:.1f} s after the signal")
    assert stopped_in <= 10, (stopped_in, text)
    assert "stopped: SIGTERM received" in text and "2 unfinished" in text, text
    assert read_holder(sweep_dir) is None and not (sweep_dir / "live.json").exists()
    _client, children = mlflow_children(sweep_dir, "grp")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    parent = [r for r in client.search_runs([client.get_experiment_by_name("grp").experiment_id])
              if r.data.tags.get("fpr.role") == "sweep"]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert all(r.info.status == "KILLED" for r in children) and len(children) == 2


# ---------------------------------------------------------------- a spool that cannot lose silently

@pytest.mark.slow
def test_a_torn_spool_is_reported_and_mlflow_is_rebuilt_from_the_table(finished_sweep, tmp_path):
    """Issue 33, row "spool.jsonl cut in half between runs": the next run names the torn spool and
    reconciles MLflow with the table: a trial whose run never reached MLflow gets one (final
    metrics and model from the files on disk), a RUNNING run of a finished trial is ended."""
    from mlflow import MlflowClient

    from orchestrator.store.spool import PARENT, Spool

    spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("done")
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id])
            if "mlflow.parentRunId" in r.data.tags}
    lost, running = sorted(runs)
    client.delete_run(runs[lost].info.run_id)  # its creation was in the part of the spool that was cut off
    client.update_run(runs[running].info.run_id, status="RUNNING")  # its end was too
    spool = Spool(sweep_dir)
    spool.append({"op": "tags", "trial": PARENT, "tags": {"probe": "kept"}})
    spool.append({"op": "tags", "trial": PARENT, "tags": {"probe2": "cut"}})
    text = spool.path.read_bytes()
    spool.path.write_bytes(text[:len(text) - 20])  # cut in half between runs
    done = run_cli("run", str(spec), env=plugin_env(), timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 line was cut short or failed the checksum" in out
    assert f"trial {lost}: created its run" in out and f"trial {running}: ended its RUNNING run" in out
    children = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == sorted(runs)
    assert all(r.info.status == "FINISHED" and r.data.tags.get("status") == "ok" for r in children.values())
    assert children[lost].info.run_id != runs[lost].info.run_id
    assert "acc/ood_16" in children[lost].data.metrics and "model/weights_bytes" in children[lost].data.metrics
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("fpr.role") == "sweep"]
    assert parent[0].data.tags.get("probe") == "kept" and parent[0].info.status == "FINISHED"


def test_spool_lines_are_checksummed_and_model_paths_relative(tmp_path):
    """A line changed after it was written fails its checksum and is dropped (and counted); the
    weights operation names the model relative to the sweep folder, so a moved folder still
    sends it."""
    from orchestrator.store.spool import Spool

    spool = Spool(tmp_path)
    spool.append({"op": "metrics", "trial": "t", "metrics": [["loss", 0.5, 1, 2]]})
    spool.append({"op": "tags", "trial": "t", "tags": {"a": "b"}})
    assert all(json.loads(line)["crc"] for line in spool.path.read_text().splitlines())
    spool.path.write_text(spool.path.read_text().replace("0.5", "0.7"))
    again = Spool(tmp_path)
    assert [op["op"] for op in again.ops] == ["tags"] and again.torn == 1
    assert "1 line was cut short or failed the checksum" in again.torn_note()


# ---------------------------------------------------------------- shared stores

OPEN_STORE = """
import sys, time
from pathlib import Path
from orchestrator.store.tracking import SweepTracker
uri, sweep_dir, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
t = SweepTracker(uri, sweep_dir.name, sweep_dir, {"k": "v"}, sweep_id=sweep_dir.name)
t.log_sweep_params({"x": 1})
print("problem:", t.end_sweep("FINISHED"), flush=True)
"""


@pytest.mark.slow
def test_two_sweeps_starting_at_once_on_a_fresh_shared_sqlite_store(tmp_path):
    """Issue 33, row "two sweeps started at once on a fresh shared SQLite store": creating and
    migrating the store is serialised by a file lock; both sweeps open it, and it works after."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(tmp_path / f"sweep{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
             for i in range(2)]
    time.sleep(3)  # both imported mlflow and wait at the start line
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("problem: None" in o for o in outs), outs
    client = MlflowClient(uri)
    assert sorted(e.name for e in client.search_experiments() if e.name.startswith("sweep")) == ["sweep0", "sweep1"]


# ---------------------------------------------------------------- clear ends

@pytest.mark.slow
def test_ui_on_a_busy_port_exits_2_at_once(finished_sweep, tmp_path):
    """Issue 33, row "`ui` on a port already in use": exit 2 with the reason, no URL, no server."""
    import socket

    _spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.time()
        done = run_cli("ui", str(sweep_dir), "--port", str(port), env=plugin_env(), timeout=60)
        took = time.time() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "http://" not in done.stdout
    assert took < 10, took


def test_validate_and_dry_run_name_every_destination(tmp_path):
    """Issue 33, row "`results_dir: /etc` with a remote `tracking_uri`": `validate` and `run
    --dry-run` print where rows, models and tracking go, and say when that is outside the working
    tree or a remote tracker (nothing is contacted or created)."""
    uri = "http://tracker.example.invalid:5000"
    path = write_spec(tmp_path, name="dest", results_dir="/etc", tracking_uri=uri,
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    for args in (("validate", str(path)), ("run", str(path), "--dry-run")):
        done = run_cli(*args, env=plugin_env(), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rows:     /etc/dest/trials, /etc/dest/results.parquet  (outside the working tree)" in done.stdout
        assert "models:   /etc/dest/models" in done.stdout
        assert f"tracking: {uri}  (a remote tracker" in done.stdout
    assert not Path("/etc/dest").exists()


@pytest.mark.slow
def test_a_killed_ui_takes_its_server_with_it(finished_sweep, tmp_path):
    """Issue 33, row "`ui` SIGKILLed": the MLflow server's group goes with it and the port is free."""
    import socket
    import urllib.request

    _spec, sweep_dir = copy_sweep(finished_sweep, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(cli("ui", str(sweep_dir), "--port", str(port)), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd=REPO, env=plugin_env(), start_new_session=True)

    def serving() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_for(serving, 120, "the MLflow server", ui, poll_s=0.5)
        ui.kill()  # SIGKILL: no handler runs in `ui`
        ui.wait(timeout=10)
        wait_for(lambda: not serving(), 20, "the server to stop", poll_s=0.2)
        time.sleep(1)
        with socket.socket() as s:  # nothing listens on the port (as uvicorn binds: TIME_WAIT is fine)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        kill_group(ui)
