"""`fpr-sweep ui`: the store comes from the sweep folder itself (a copied or moved folder shows its
own runs; a missing store is an error, never a new empty database), and SIGTERM / Ctrl-C stop the
MLflow server with all its processes, free the port within seconds and print no traceback."""
from __future__ import annotations

import json
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
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store import store_address, tracking
from orchestrator.store.ui import UiError, resolve_store, tracking_uri_of

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _make_sweep(results: Path, name: str) -> Path:
    """A sweep folder as `fpr-sweep run` leaves it: sweep.json naming the absolute store path, the
    store with the sweep's parent run and one trial run."""
    d = results / name
    d.mkdir(parents=True)
    uri = store_address.default_tracking_uri(d)
    (d / "sweep.json").write_text(json.dumps({"name": name, "tracking_uri": uri}))
    t = tracking.SweepTracker(uri, name, d, {})
    t.trial_run("t0", f"{name}/t0", {"task": "mazes"}, {"model": {"dim": 8}})
    t.end_trial("t0", "ok")
    t.end_sweep("FINISHED")
    return d


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return _make_sweep(tmp_path_factory.mktemp("ui") / "results", "ui-src")


def test_a_copied_folder_opens_its_own_store(sweep, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(sweep, copy)
    assert resolve_store(copy).uri == f"sqlite:///{copy / 'mlflow.db'}"
    assert tracking_uri_of(copy) == f"sqlite:///{copy / 'mlflow.db'}"  # what report and eval write to


def test_a_moved_folder_opens_its_store_and_creates_nothing_at_the_old_path(sweep, tmp_path):
    original = tmp_path / "results" / "ui-src"
    shutil.copytree(sweep, original)
    moved = tmp_path / "moved"
    original.rename(moved)
    assert resolve_store(moved).uri == f"sqlite:///{moved / 'mlflow.db'}"
    assert not original.exists()


def test_a_missing_store_is_an_error_not_a_new_database(sweep, tmp_path):
    copy = tmp_path / "no-db"
    shutil.copytree(sweep, copy)
    (copy / "mlflow.db").unlink()
    with pytest.raises(UiError, match="mlflow.db does not exist"):
        resolve_store(copy)
    result = runner.invoke(app, ["ui", str(copy), "--port", str(_free_port())])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    assert not (copy / "mlflow.db").exists() and (sweep / "mlflow.db").exists()


def test_a_server_tracked_sweep_opens_the_cluster_store_after_rsync_down(tmp_path):
    results = tmp_path / "results"
    d = results / "ood"
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"name": "ood", "tracking_uri": "http://127.0.0.1:5000"}))
    assert resolve_store(d).remote  # on the head: the server itself
    (results / "mlflow").mkdir()
    (results / "mlflow" / "mlflow.db").touch()  # what `ray rsync-down ... ~/results/` brings home
    store = resolve_store(d)
    assert store.uri == f"sqlite:///{results / 'mlflow' / 'mlflow.db'}"
    assert store.artifacts == results / "mlflow" / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_pids(port: int) -> list[int]:
    """Processes whose command line names the port (the mlflow CLI, uvicorn and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(port).encode() in argv and any(b"mlflow" in a or b"uvicorn" in a for a in argv):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_stops_every_server_process_and_frees_the_port(sweep, tmp_path, stop_signal):
    moved = tmp_path / "moved-away"
    shutil.copytree(sweep, moved)
    port = _free_port()
    out = tmp_path / "ui.log"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", str(moved), "--port", str(port)],
                            cwd=REPO, stdout=open(out, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                body = json.dumps({"experiment_ids": [], "max_results": 10}).encode()
                exps = urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search", data=body,
                    headers={"Content-Type": "application/json"}), timeout=5)
                names = [e["name"] for e in json.load(exps)["experiments"]]
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the UI did not come up:\n" + out.read_text())
        assert "ui-src" in names  # the moved folder's own runs
        serving = _server_pids(port)
        assert serving
        # Ctrl-C: the terminal signals the whole foreground process group; SIGTERM: the CLI alone.
        sent = time.time()
        if stop_signal == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.time() - sent
        while _port_in_use(port) and time.time() - sent < 10:
            time.sleep(0.1)
        freed = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    assert code == 0 and took < 8, (code, took, text[-3000:])
    assert not _port_in_use(port) and freed < 8
    assert not [p for p in serving if Path(f"/proc/{p}").exists()], "server processes left running"
    assert "Traceback" not in text, text[-3000:]
    print(f"{stop_signal.name}: CLI exited in {took:.1f} s, port free after {freed:.1f} s")
