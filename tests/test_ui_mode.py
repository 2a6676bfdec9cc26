"""The MLflow UI opens our experiments in model-training mode, seen in a real browser: a real
`mlflow server` on a sweep store made by the tracker, and Debian's headless Chromium rendering the
URL that `fpr-sweep ui` prints. The control (the bare experiment URL) shows MLflow's GenAI default,
so the check can tell the two modes apart."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.store.tracking import SweepTracker
from orchestrator.store.ui_mode import sweep_experiment_id, training_url

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path("/tmp/ui_training_mode.png")
GENAI_ONLY = ("Judges", "Sessions", "Evaluation runs", "Agent versions")
"""Sidebar entries of MLflow's GenAI mode (absent in model-training mode)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str) -> str:
    """Render a page headless (15 s of virtual time for the UI's fetches); stdout (the DOM)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
           "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_experiment_page_opens_in_training_mode(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "uimode", tmp_path, tags={}, sweep_id="u" * 32, description="Does recall help?")
    for trial, recall in (("t1", "none"), ("t2", "standard")):
        run = tracker.trial_run(trial, f"prefix_sums/recall={recall}/s0/{trial}",
                                {"task": "prefix_sums", "variant": f"recall={recall}"}, {"model": {"recall": recall}})
        tracker.log_metrics(run, {"train/loss": 0.5}, 1)
        tracker.end_trial(trial, "ok")
    assert tracker.end_sweep("FINISHED", drain_s=60) is None

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not come up"
                time.sleep(0.5)
        exp_id = sweep_experiment_id(uri)
        assert exp_id == tracker.experiment_id
        url = training_url(f"http://127.0.0.1:{port}", exp_id)
        assert url.endswith(f"/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=trials")

        dom = _chromium("--dump-dom", url)
        assert "Model training" in dom and "uimode" in dom
        Path("/tmp/ui_training_mode.html").write_text(dom)
        assert "Run Name" in dom and "matching runs" in dom  # the Runs table
        assert not [w for w in GENAI_ONLY if w in dom], "GenAI sidebar entries in training mode"
        # The trials view: the trials are listed (not collapsed under the sweep's run), one group per
        # task and variant; the bare page lists the sweep's run alone.
        assert "Trials by task and variant" in dom
        assert "prefix_sums/recall=none/s0/t1" in dom and "prefix_sums/recall=standard/s0/t2" in dom
        assert "Group:" in dom
        _chromium(f"--screenshot={SCREENSHOT}", url)
        assert SCREENSHOT.stat().st_size > 10_000

        bare = _chromium("--dump-dom", f"http://127.0.0.1:{port}/#/experiments/{exp_id}")
        assert "Judges" in bare  # MLflow's default for a browser that never chose: GenAI
        bare_runs = _chromium("--dump-dom", f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
        assert "matching runs" in bare_runs and "prefix_sums/recall=none/s0/t1" not in bare_runs  # collapsed
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # uvicorn and its workers: the whole group we started
        server.wait(timeout=30)
