"""Issue 33, 'tracking server answering in 5 s': the run ended with rc 1 and '(no answer)', 27 of
102 writes sent. A real `mlflow server` is made slow by a small HTTP proxy in this test that holds
every metric/tag/param batch (``runs/log-batch``) for a few seconds, longer than the client's
timeout. The run says the server is slow, in one line, and keeps the writes in its spool; the next
run, with the server fast again, sends every one of them exactly once."""
from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TINY_BASE, write_spec
from mlflow_server import MlflowServer
from test_faults_more import plugin_env, run_cli

pytestmark = pytest.mark.slow


class SlowProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``target`` (host, port): requests whose path ends
    with one of ``slow_paths`` wait ``delay`` seconds before they are forwarded (set ``delay`` to 0
    to make the server fast again); everything else passes at once."""

    def __init__(self, target_port: int, slow_paths: tuple[str, ...], delay: float) -> None:
        self.target_port, self.slow_paths, self.delay = target_port, slow_paths, delay
        self.held = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.split("?")[0].endswith(proxy.slow_paths) and proxy.delay:
                    proxy.held += 1
                    time.sleep(proxy.delay)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                try:
                    self.send_response(answer.status)
                    for k, v in answer.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (its timeout): nothing to answer
                    pass
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pending_writes(sweep_dir: Path) -> int:
    from orchestrator.store.spool import Spool

    return len(Spool(sweep_dir).pending())


def test_a_slow_tracking_server_is_called_slow_and_its_writes_wait_in_the_spool(tmp_path):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 20, "log_every": 2}}
    path = write_spec(tmp_path, name="slowtrack", base=base, max_concurrent=2, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]},
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [24]}])
    server = MlflowServer(tmp_path / "server").start()
    proxy = SlowProxy(server.port, ("/runs/log-batch",), delay=4.0)
    env = plugin_env(MLFLOW_HTTP_REQUEST_TIMEOUT="2", FPR_TRACKING_DRAIN_S="5")
    sweep_dir = tmp_path / "results" / "slowtrack"
    try:
        slow = run_cli("run", str(path), "--tracking-uri", proxy.uri, env=env, timeout=400)
        out = slow.stdout + slow.stderr
        assert proxy.held > 0, out
        table = pd.read_parquet(sweep_dir / "results.parquet")
        assert len(table) == 4 and set(table.status) == {"ok"}, out  # the table never waits on MLflow
        slow_lines = [line for line in out.splitlines() if "is slow" in line]
        assert len(slow_lines) == 1, out
        assert f"tracking server {proxy.uri} is slow" in slow_lines[0]
        assert "requests got no answer within 2 s" in slow_lines[0] and "spool.jsonl" in slow_lines[0], slow_lines[0]
        assert "has not accepted writes" not in out and "Traceback" not in out, out
        assert slow.returncode == 1, out  # MLflow is incomplete: said, and kept for the next run
        left = pending_writes(sweep_dir)
        assert left > 0

        proxy.delay = 0.0  # the server is fast again
        fast = run_cli("run", str(path), "--tracking-uri", proxy.uri, env=env, timeout=400)
        out2 = fast.stdout + fast.stderr
        assert fast.returncode == 0 and "is slow" not in out2, out2
        assert pending_writes(sweep_dir) == 0

        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("slowtrack")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        trials = [r for r in runs if "trial_id" in r.data.tags]
        assert sorted(r.data.tags["trial_id"] for r in trials) == sorted(table.trial_id.unique())
        assert {r.info.status for r in runs} == {"FINISHED"}
        for run in trials:
            history = client.get_metric_history(run.info.run_id, "train/loss")
            steps = Counter(m.step for m in history)
            assert sorted(steps) == list(range(2, 21, 2)), sorted(steps)  # every logged step arrived ...
            assert set(steps.values()) == {1}, steps  # ... exactly once
        print(f"{left} writes kept after the slow run; {proxy.held} batches held; {slow_lines[0]}")
    finally:
        proxy.close()
        server.kill()
