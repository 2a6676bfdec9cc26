"""`fpr-sweep ui`: find a sweep's MLflow store from its own folder and serve it until stopped.

The store is looked up relative to the sweep folder, never at the absolute path recorded when the
sweep ran, so a copied or moved results folder shows its own data (and a missing store is an
error: MLflow would silently create an empty one). The server runs in a process group of its own
with its job workers off; SIGTERM or Ctrl-C stops the whole group, so the port is free again
within seconds. A `ui` killed outright (SIGKILL, an OOM kill) takes the server with it: the group
is led by a small supervisor (``SUPERVISOR``) that has the parent-death signal set and stops its
group when `ui` goes (the signal itself reaches only a direct child, not uvicorn's workers).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.store.sqlite_store import relocate_artifacts
from orchestrator.sweep.errors import UiError
from orchestrator.sweep.layout import SweepDir, SweepPath

SERVER_STORE = Path("mlflow") / "mlflow.db"
"""Where cluster/mlflow-server.sh keeps the tracking server's store, relative to the results root
(the sweep folder's parent): a sweep tracked by that server and synced down opens from it."""
STOP_GRACE_S = 3.0
"""uvicorn frees the port within a second of SIGTERM; the `mlflow server` CLI above it lingers ~8 s
holding nothing, so what is left after this long is killed."""


@dataclass
class Store:
    """What `ui` serves: a local SQLite store (and the artifact root next to it) or a server URL."""

    uri: str
    artifacts: Optional[Path] = None

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))


def _sqlite_path(uri: str) -> Optional[Path]:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):] if uri.startswith("sqlite:////") else "/" + uri[len("sqlite:///"):])


def tracking_uri_of(sweep_dir: SweepPath) -> str:
    """The sweep's tracking URI as sweep.json records it, except that a default store (the folder's
    own mlflow.db) is looked up in ``sweep_dir`` itself, wherever the folder is now."""
    layout = SweepDir.of(sweep_dir).resolved()
    info = json.loads(layout.info.read_text()) if layout.info.exists() else {}
    uri = info.get("tracking_uri", "")
    return f"sqlite:///{layout.mlflow_db}" if not uri or _was_default(uri, info, layout) else uri


def _was_default(uri: str, info: dict, layout: SweepDir) -> bool:
    """Was ``uri`` the default store of the folder (named as sweep.json says) when the sweep ran?"""
    recorded = _sqlite_path(uri)
    return recorded is not None and recorded.name == layout.mlflow_db.name \
        and recorded.parent.name == info.get("name", layout.name)


def resolve_store(sweep_dir: SweepPath) -> Store:
    """The sweep's store, found from ``sweep_dir`` itself.

    - default store: ``<sweep>/mlflow.db`` (whatever absolute path sweep.json recorded);
    - a tracking server (http): its store under ``<results>/mlflow/`` when the folder came from the
      cluster recipe, else the server's URL (to open in a browser);
    - a SQLite store outside the sweep folder (``--tracking-uri sqlite:///...``) is used as is.
    """
    layout = SweepDir.of(sweep_dir).resolved()
    sweep_dir = layout.root
    info = json.loads(layout.info.read_text()) if layout.info.exists() else {}
    uri = info.get("tracking_uri", "")
    if uri.startswith(("http://", "https://")):
        server_store = sweep_dir.parent / SERVER_STORE
        if server_store.exists():
            return Store(f"sqlite:///{server_store}", server_store.parent / "artifacts")
        return Store(uri)
    recorded = _sqlite_path(uri)
    was_default = recorded is None or _was_default(uri, info, layout)
    store = layout.mlflow_db if was_default else recorded
    if not store.exists():
        raise UiError(f"no MLflow store for {sweep_dir}: {store} does not exist"
                      + (f" (sweep.json names {uri}, a store of its own folder, looked up here)"
                         if was_default and recorded is not None and recorded != store else "")
                      + ". Copy the sweep folder with its mlflow.db, or run the sweep first.")
    uri = f"sqlite:///{store}"
    try:  # a copied or moved folder serves its own artifacts, not the original's
        relocate_artifacts(uri, sweep_dir)
    except sqlite3.Error as e:  # e.g. a read-only copy: serve it, saying what it shows
        sys.stderr.write(f"warning: {store}: cannot point its artifact locations at {layout.mlflow_artifacts} "
                         f"({e}); the UI shows the artifacts of the folder the store was written in.\n")
    return Store(uri)


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on (UiError), before the server starts: `mlflow
    server` on a busy port printed nothing useful, its error went to its log, and `ui` exited 0
    after 17 s (issue 33). Bound as uvicorn binds it (SO_REUSEADDR), so a port in TIME_WAIT passes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UiError(f"port {port} on {host} is already in use (another `fpr-sweep ui` or server?); "
                              "pick another with --port.") from None
            raise UiError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


SUPERVISOR = r"""
import ctypes, os, signal, subprocess, sys, time
PR_SET_PDEATHSIG = 1

def stop(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.time() + float(sys.argv[2])
    while child is not None and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)

child = None
signal.signal(signal.SIGTERM, stop)
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):  # `ui` died before the signal was set
    stop()
child = subprocess.Popen(sys.argv[3:])
sys.exit(child.wait())
"""
"""Leads the server's process group: SIGTERM (from `ui`, or as the parent-death signal when `ui`
is killed) stops the whole group, SIGKILL after the grace."""


def server_command(store: Store, port: int, host: str) -> list[str]:
    """`mlflow server` for ``store``; one web worker is plenty for browsing a sweep. uvicorn logs
    warnings and errors only: no line per HTTP request (1,318 in 15 minutes of browsing), no
    start-up chatter."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri,
           "--host", host, "--port", str(port), "--workers", "1",
           "--uvicorn-opts", "--no-access-log --log-level warning"]
    if store.artifacts is not None:
        cmd += ["--artifacts-destination", str(store.artifacts)]
    return cmd


def serve(store: Store, port: int, host: str) -> int:
    """Run the MLflow server in the foreground until it exits, SIGTERM or Ctrl-C; returns 0 when
    stopped by a signal, else the server's exit code."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey job workers
           "PYTHONWARNINGS": SERVER_WARNINGS}
    supervised = [sys.executable, "-c", SUPERVISOR, str(os.getpid()), str(STOP_GRACE_S),
                  *server_command(store, port, host)]
    server = subprocess.Popen(supervised, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
    forwarding = threading.Thread(target=forward_output, args=(server.stdout, sys.stderr), daemon=True)
    forwarding.start()
    stop_at: list[float] = []

    def stop(_signum, _frame) -> None:  # only signals here: Popen.wait holds a lock in the main flow
        if not stop_at:
            stop_at.append(time.time())
            _signal_group(server.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = _wait(server, stop_at)
    finally:
        by_signal = bool(stop_at)
        stop(None, None)  # whatever ended the wait, nothing of the server outlives this call
        _wait(server, stop_at)
        _reap_group(server.pid, stop_at[0])
        for s, handler in previous.items():
            signal.signal(s, handler)
        forwarding.join(timeout=2)
    return 0 if by_signal else code


SERVER_WARNINGS = "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated"
"""The server's Python warnings filter: deprecations inside MLflow's own dependencies are not the user's."""
SERVER_NOISE = (
    "Registry store URI not provided",          # we serve one store: its registry is that store
    "Security middleware enabled with default",  # says what `ui` already does (loopback; --host warns)
    "Press CTRL+C to quit",                      # `ui` says how it stops
)
"""Lines of `mlflow server` that ask nothing of the user; anything else it prints is passed on."""


def forward_output(lines, out) -> None:
    """Copy the server's output to ``out`` less SERVER_NOISE (until the server closes it)."""
    for line in lines:
        if not any(noise in line for noise in SERVER_NOISE):
            out.write(line)
            out.flush()


def _wait(server: subprocess.Popen, stop_at: list[float]) -> int:
    """The server's exit code; SIGKILLs its group once STOP_GRACE_S passed since a stop began."""
    while True:
        try:
            return server.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stop_at and time.time() - stop_at[0] > STOP_GRACE_S:
                _signal_group(server.pid, signal.SIGKILL)


def _reap_group(pgid: int, since: float) -> None:
    """Wait for the rest of the group (uvicorn's workers) to go; SIGKILL it after STOP_GRACE_S."""
    while _group_alive(pgid):
        if time.time() - since > STOP_GRACE_S:
            _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
