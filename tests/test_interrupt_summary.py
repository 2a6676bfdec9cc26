"""Interrupts read true (issue 32 item 5): the Ctrl-C summary counts what `status` counts, Tune's
own stop notice does not leak, variant codes follow the spec's order on every run, an ETA shows as
soon as a resumed run is under way, `eval` shows progress between results, and the closing `ui`
hint works as printed. Real Parquet files and, in the slow test, a real interrupted `fpr-sweep run`."""
from __future__ import annotations

import io
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.console import STOPPING, Heartbeat, SweepProgress, quiet_ray_messages
from orchestrator.store import parquet
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.run import record
from orchestrator.sweep.expand import resolve
from orchestrator.sweep.plan import plan_sweep

from conftest import TINY_BASE, write_spec

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _pipe() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=160), out


def test_variant_codes_follow_the_spec_order_not_the_order_trials_start():
    order = [f"recall={r},outer_norm={n},spectral=contractive" for r in ("none", "standard") for n in ("none", "rms")]
    console, out = _pipe()
    progress = SweepProgress(console, total=4, variants=order)
    progress.start()
    progress.started("t4", "mazes", order[3], 0)  # a resumed run starts with the last variant
    progress.started("t2", "mazes", order[1], 0)
    progress.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == f"variant v4 = {order[3]}" and "mazes v4 s0 t4" in lines[1]
    assert lines[2] == f"variant v2 = {order[1]}" and "mazes v2 s0 t2" in lines[3]


def test_a_resumed_run_shows_an_eta_before_its_first_trial_ends():
    console, _ = _pipe()
    progress = SweepProgress(console, total=10, already_done=4, trial_seconds=60.0)
    assert progress.eta_seconds() is None  # nothing running yet: no rate to speak of
    progress.started("a", "mazes", "base", 0)
    progress.started("b", "mazes", "base", 1)
    now = time.time()
    for line in progress.lines.values():
        line.started = now - 20  # both 20 s in
    eta = progress.eta_seconds(now=now)
    assert eta == pytest.approx(40 + 4 * 60 / 2)  # the running two end in 40 s, then 4 more, 2 at a time
    assert "ETA ~" in progress.summary() and "ETA --" not in progress.summary()


def test_tunes_stop_notice_is_replaced_by_ours(capsys):
    import ray.tune.tune as tune_module

    quiet_ray_messages()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    keep = Keep()
    tune_module.logger.addHandler(keep)
    try:  # the message as ray/tune/tune.py logs it in its SIGINT handler
        tune_module.logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. This will "
                                   "try to checkpoint the experiment state one last time. Press CTRL+C (or send "
                                   "SIGINT/SIGKILL/SIGTERM) to skip. ")
    finally:
        tune_module.logger.removeHandler(keep)
    assert seen == []
    assert capsys.readouterr().err.strip() == STOPPING


def test_heartbeat_in_a_pipe_says_where_a_long_wait_stands():
    console, out = _pipe()
    state = {"done": 0}
    with Heartbeat(console, lambda: f"evaluating: {state['done']}/3 tasks done", every_s=0.05) as beat:
        beat.tick()  # too soon: nothing
        time.sleep(0.06)
        beat.tick()
        state["done"] = 1
        beat.news()  # a result line was printed: the clock restarts
        beat.tick()
    assert out.getvalue().splitlines() == ["evaluating: 0/3 tasks done"]


def _folder(tmp_path, statuses):
    spec_path = write_spec(tmp_path, name="intr", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                           axes={"model.recall": ["none", "standard"], "model.outer_norm": ["none", "rms"]},
                           seeds=[0, 1])
    plan = plan_sweep(spec_path)
    sweep_dir = tmp_path / "results" / "intr"
    sweep_dir.mkdir(parents=True)
    record.write_record(sweep_dir, plan.spec, spec_path.read_text(), spec_path, "sqlite:///x.db", False, None)
    meta = SweepMeta("intr", plan.spec.spec_hash(), "abc")
    for cell, status in zip(plan.cells(), statuses):
        parquet.write_trial_rows(sweep_dir, cell.cell_id, placeholder_rows(resolve(cell), meta, status))
    return plan, sweep_dir


def test_the_closing_counts_are_what_status_counts(tmp_path):
    from orchestrator.run.driver import closing_counts

    plan, sweep_dir = _folder(tmp_path, ["ok", "ok", "failed", "diverged"])  # 4 of 8 have rows
    counts, unfinished = closing_counts(plan, sweep_dir)
    assert (counts, unfinished) == ({"ok": 2, "failed": 1, "diverged": 1}, 4)
    status = CliRunner().invoke(app, ["status", str(sweep_dir)])
    assert status.output.strip().splitlines()[-1] == "1 diverged, 1 failed, 2 ok, 4 pending"


# ---------------------------------------------------------------- a real interrupted run

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _legend(text: str) -> dict[str, str]:
    return dict(re.findall(r"^variant (v\d+) = (\S+)$", text, flags=re.M))


@pytest.mark.slow
def test_an_interrupted_run_reads_true_and_resumes_with_the_same_codes(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 150, "checkpoint_every": 50}}
    spec_path = write_spec(tmp_path, name="intr", base=base, max_concurrent=2, seeds=[0, 1],
                           tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                           axes={"model.recall": ["none", "standard"], "model.outer_norm": ["none", "rms"]})
    elsewhere = tmp_path / "elsewhere"  # --results-dir: the closing `ui` hint must keep it
    sweep_dir = elsewhere / "intr"
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(spec_path), "--results-dir", str(elsewhere)]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                  start_new_session=True)
    try:
        deadline = time.time() + 400
        while len(list((sweep_dir / "trials").glob("*.parquet"))) < 2:
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        assert driver.wait(timeout=180) == 1
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    first = log.read_text()
    assert "Stop signal received" not in first and "Press CTRL+C" not in first, first[-3000:]
    assert STOPPING in first
    summary = re.search(r"^trials: (.*?); (\d+) unfinished", first, flags=re.M)
    assert summary, first[-3000:]
    counts = dict((s, int(n)) for n, s in (part.split(" ") for part in summary.group(1).split(", ")))
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "intr", "--results-dir",
                             str(elsewhere)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    expected = sorted([*(f"{n} {s}" for s, n in counts.items()), f"{summary.group(2)} pending"],
                      key=lambda t: t.split(" ")[1])
    assert status.stdout.strip().splitlines()[-1] == ", ".join(expected), (first[-2000:], status.stdout)

    from orchestrator.run.driver import mean_trial_seconds, variants_in_order

    assert mean_trial_seconds(sweep_dir) > 0  # what a resumed run's ETA starts from
    order = variants_in_order(plan_sweep(spec_path))
    spec_codes = {f"v{i + 1}": v for i, v in enumerate(order)}
    assert _legend(first).items() <= spec_codes.items()

    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _legend(second.stdout).items() <= spec_codes.items() and _legend(second.stdout)
    assert "trials: 8 ok" in second.stdout and "unfinished" not in second.stdout

    hint = re.search(r"\(fpr-sweep ui (.+)\)$", second.stdout, flags=re.M).group(1)  # run as printed
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", *shlex.split(hint), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                          start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert ui.poll() is None, ui.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.time() < deadline, "the UI did not answer"
                time.sleep(0.5)
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)


def test_mlflow_model_logging_notices_are_dropped_even_under_mlflows_own_filter():
    """MLflow logs a model under ``simplefilter("once", UserWarning)``, which outranks any filter:
    its notices are dropped at display; any other warning is still shown."""
    import warnings

    from mlflow.utils.annotations import filter_user_warnings_once
    from mlflow.utils.warnings_utils import color_warning

    @filter_user_warnings_once
    def log_a_model():
        color_warning("Add type hints to the `predict` method to enable data validation", stacklevel=1,
                      color="yellow")
        warnings.warn("a warning the user must see", UserWarning)

    with warnings.catch_warnings(record=True) as caught:
        quiet_ray_messages()
        log_a_model()
    assert [str(w.message) for w in caught] == ["a warning the user must see"]
