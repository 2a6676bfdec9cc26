"""`fpr-sweep ui` is quiet (issue 32 item 9): no line per HTTP request, no start-up chatter or
library deprecations; what the server says otherwise (an error) still reaches the user."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.store import store_address, tracking
from orchestrator.store.ui import forward_output

REPO = Path(__file__).resolve().parent.parent


def test_only_server_noise_is_dropped():
    lines = ["Registry store URI not provided. Using backend store URI.\n",
             "[MLflow] Security middleware enabled with default settings (localhost-only). ...\n",
             "INFO:     Uvicorn running on http://127.0.0.1:5000 (Press CTRL+C to quit)\n",
             "ERROR:    [Errno 13] error while attempting to bind on address ('127.0.0.1', 80): permission denied\n"]
    out = io.StringIO()
    forward_output(iter(lines), out)
    assert out.getvalue() == lines[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_browsing_the_ui_prints_nothing_but_its_address(tmp_path):
    sweep_dir = tmp_path / "results" / "quiet"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "quiet"}))
    tr = tracking.SweepTracker(store_address.default_tracking_uri(sweep_dir), "quiet", sweep_dir, {})
    run = tr.trial_run("t1", "t1", {"task": "prefix_sums", "variant": "recall=none", "seed": "0"}, {"seed": 0})
    tr.log_metrics(run, {"train/loss": 0.5}, 5)
    tr.end_trial("t1", "ok")
    assert tr.end_sweep("FINISHED") is None

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", str(sweep_dir), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert ui.poll() is None and time.time() < deadline, "the UI did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        for path in ["/", "/version", "/ajax-api/2.0/mlflow/experiments/search?max_results=10"] * 10:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                assert answer.status == 200
    finally:
        ui.send_signal(signal.SIGTERM)
        output, _ = ui.communicate(timeout=60)
    lines = [line for line in output.splitlines() if line.strip()]
    assert " ".join(lines).startswith("MLflow UI for quiet: http://127.0.0.1:"), output
    assert "GET /" not in output and "Registry store" not in output and "Deprecat" not in output, output
    assert len(lines) <= 3, output  # the address line, wrapped at most once
