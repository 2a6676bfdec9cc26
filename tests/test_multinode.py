"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), one CPU
each: sweeps joined with `fpr-sweep run --address` run trials on both nodes, two sweeps at once
write one results dir, and a worker node killed mid-trial costs a retry, not the sweep.

Only the processes this module started are stopped: each `ray start --block` runs in its own
process group (its GCS/raylet/workers inherit it) and is killed by that group id, never `ray stop`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow.parquet as pq

import pytest

from conftest import TINY_BASE, write_spec
from test_ray_lifecycle import alive, join_and_leave

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """Token auth (Ray's default) for CLI calls and drivers; fault tasks importable on both nodes."""
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": path, "FPR_TASK_PLUGINS": "fault_tasks",
            "RAY_ADDRESS": ""}


class Cluster:
    """Head + one worker node, each a `ray start --block` in its own process group."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = cluster_env()
        self.tmp = tmp
        self.head: Optional[subprocess.Popen] = None
        self.worker: Optional[subprocess.Popen] = None
        try:
            self.head = self._start("head", "--head", f"--port={self.port}", "--include-dashboard=false",
                                    f"--temp-dir={tmp / 'ray'}")
            self._wait_nodes(1)
            self.worker = self._start("worker", f"--address={self.address}")
            self._wait_nodes(2)
        except BaseException:  # a node that never came up must not leave the other one running
            self.stop()
            raise

    def stop(self) -> None:
        """SIGKILL every node started so far."""
        for proc in (self.worker, self.head):
            if proc is not None:
                self.kill(proc)

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        return subprocess.Popen([RAY, "start", "--num-cpus=1", "--block", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and r.stdout.count(" node_") >= n:
                return
            time.sleep(1)
        raise AssertionError(f"{n} Ray node(s) not up after {timeout} s:\n" + r.stdout + r.stderr)

    def node_ids(self) -> dict[str, str]:
        """'head'/'worker' -> Ray node id (from each node's raylet command line)."""
        out = {}
        for name, proc in (("head", self.head), ("worker", self.worker)):
            for pid in node_pids(proc.pid):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if cmd[0].endswith(b"/raylet"):
                    out[name] = next(a.split(b"=", 1)[1].decode() for a in cmd if a.startswith(b"--node_id="))
        return out

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL one node: its process group, then its workers (in groups of their own)."""
        pids = node_pids(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        proc.wait(timeout=30)


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def node_pids(pgid: int) -> set[int]:
    """Processes of the node started in process group ``pgid``: the group (ray start, raylet,
    agents) and their descendants (Ray's workers get their own process groups)."""
    parents = _parents()
    pids = set()
    for pid in parents:
        try:
            if os.getpgid(pid) == pgid:
                pids.add(pid)
        except ProcessLookupError:
            continue
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in pids} - pids
        pids |= children
        grew = bool(children)
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


def _run(spec: Path, cluster: Cluster, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--address", cluster.address,
                             *extra], env=cluster.env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _counter_task(counter: Path) -> dict:
    return {"name": "flaky_parity", "params": {"counter": str(counter), "fail_attempts": 0},
            "train_size": 8, "ood_sizes": [16]}


def test_two_sweeps_share_the_cluster_and_use_both_nodes(cluster, tmp_path):
    nodes = cluster.node_ids()
    specs = [write_spec(tmp_path, name=f"mn-{k}", results_dir=str(tmp_path / "results"),
                        tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                        axes={"model.recall": ["none", "standard"]}) for k in ("a", "b")]
    errors: list[str] = []
    stop = threading.Event()

    def read_all() -> None:  # every visible Parquet file must be complete while both sweeps write
        while not stop.is_set():
            for p in (tmp_path / "results").rglob("*.parquet"):
                try:
                    pq.read_table(p)
                except FileNotFoundError:
                    continue
                except Exception as e:
                    errors.append(f"{p}: {e}")
            time.sleep(0.05)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        # Same trials (same spec hash) under one shared storage path: each sweep gets its own folder.
        drivers = [_run(s, cluster, tmp_path / f"{s.stem}.log", "--storage-path", str(tmp_path / "shared"))
                   for s in specs]
        codes = [d.wait(timeout=400) for d in drivers]
    finally:
        stop.set()
        reader.join()
    logs = "\n".join((tmp_path / f"{s.stem}.log").read_text() for s in specs)
    assert codes == [0, 0], logs
    assert not errors, errors[:3]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["mn-a", "mn-b"]
    df = pd.concat([pd.read_parquet(tmp_path / "results" / s.stem / "results.parquet") for s in specs])
    assert len(df) == 2 * 2 * 2 and set(df.status) == {"ok"}
    assert not df.duplicated(["sweep", "trial_id", "split"]).any()
    assert set(df.node_id) == set(nodes.values()), (df[["sweep", "trial_id", "node_id"]], nodes)
    print(df.drop_duplicates(["sweep", "trial_id"])[["sweep", "trial_id", "hostname", "node_id", "status"]].to_string())


def test_leaving_the_cluster_stops_none_of_its_processes(cluster):
    """`fpr-sweep` stops a local Ray it started (killing its autoscaler monitor first); a cluster it
    joined keeps every process, the head's monitor included."""
    head = node_pids(cluster.head.pid)
    assert any(b"monitor.py" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in head)
    join_and_leave(cluster.address, cluster.env)
    assert [pid for pid in head if not alive(pid)] == []


def test_worker_node_killed_mid_trial_is_retried_and_the_sweep_completes(cluster, tmp_path):
    nodes = cluster.node_ids()
    counters = [tmp_path / f"trial{i}.attempts" for i in range(2)]
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 600, "checkpoint_every": 10}}
    spec = write_spec(tmp_path, name="mn-kill", base=base, max_failures=2,
                      tasks=[_counter_task(c) for c in counters])
    log = tmp_path / "kill.log"
    driver = _run(spec, cluster, log)
    try:
        deadline = time.time() + 240
        while not all(c.exists() for c in counters) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        worker_pids = node_pids(cluster.worker.pid)
        on_worker = [c for c in counters if c.exists() and int(c.read_text().split()[0]) in worker_pids]
        assert len(on_worker) == 1, log.read_text()  # one CPU per node: one trial runs on each
        time.sleep(2)  # mid-training: 600 steps take well over 2 s (a trial already finished would
        # be re-reported from its final checkpoint, rows and node id included)
        cluster.kill(cluster.worker)
        code = driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert code == 0, log.read_text()
    assert len(on_worker[0].read_text().split()) == 2  # killed on the worker node, retried once
    df = pd.read_parquet(tmp_path / "results" / "mn-kill" / "results.parquet")
    assert len(df) == 2 * 2 and set(df.status) == {"ok"} and not df.duplicated(["trial_id", "split"]).any()
    retried = df[df.task_params.str.contains(on_worker[0].name)]
    assert set(retried.node_id) == {nodes["head"]}  # finished on the surviving node
    print(df.drop_duplicates("trial_id")[["trial_id", "hostname", "node_id", "status"]].to_string())
