"""Leaving Ray at the end of `fpr-sweep`: a local Ray is stopped whole (a joined cluster is left
running: tests/test_multinode.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent

JOIN_AND_LEAVE = """
import json, sys, ray
from rich.console import Console
from orchestrator.run.ray_session import ensure_ray, stop_ray
ensure_ray(sys.argv[1] or None, Console(stderr=True))
node = ray._private.worker._global_node
pids = [i.process.pid for infos in node.all_processes.values() for i in infos]
stop_ray()
print(json.dumps({"pids": pids, "initialized": ray.is_initialized()}))
"""


def alive(pid: int) -> bool:
    """Running, not exited (a zombie has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def join_and_leave(address: str = "", env: dict[str, str] | None = None) -> dict:
    """In a fresh process: start (or join) Ray as `fpr-sweep run` does, leave it as `fpr-sweep` does;
    the pids of the Ray processes that process knew of."""
    env = {**(env or os.environ), "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", JOIN_AND_LEAVE, address], capture_output=True, text=True,
                          env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_stopping_a_local_ray_leaves_none_of_its_processes():
    out = join_and_leave()
    assert out["pids"], "a local Ray has processes (raylet, GCS, monitor, ...)"
    assert not out["initialized"]
    assert [pid for pid in out["pids"] if alive(pid)] == []
