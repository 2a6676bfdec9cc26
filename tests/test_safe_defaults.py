"""Safe defaults: servers bind to loopback unless told otherwise (with a warning), a sweep cannot
write outside its results dir, checkpoints load weights only, and secrets in the environment
never reach MLflow, the Parquet table or any other file of a sweep."""
from __future__ import annotations

import ipaddress
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from orchestrator.cli import app
from conftest import write_spec

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_ip(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of a /proc/net/tcp{,6} address field; the kernel prints each 32-bit word in host
    (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a socket in LISTEN state on ``port`` (from /proc/net/tcp*)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                out.add(str(_proc_ip(addr)))
    return out


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                            start_new_session=True, **kw)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the CLI as Ctrl-C would, so it stops what it started (`ui`: its MLflow server, which
    runs in a session of its own and would outlive a SIGKILL of the CLI); SIGKILL the CLI's group
    if it is still there after that."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def _sweep_dir(tmp_path: Path) -> Path:
    d = tmp_path / "results" / "ui-test"
    (d / "trials").mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"tracking_uri": f"sqlite:///{d / 'mlflow.db'}"}))
    (d / "mlflow.db").touch()  # an empty SQLite file: the server creates MLflow's tables in it
    return d


@pytest.mark.slow
def test_mlflow_ui_listens_on_loopback_only(tmp_path):
    port = _free_port()
    proc = _cli("ui", str(_sweep_dir(tmp_path)), "--port", str(port), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not listening_addresses(port) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)


def test_exposing_the_mlflow_ui_warns_first(tmp_path):
    proc = _cli("ui", str(_sweep_dir(tmp_path)), "--host", "0.0.0.0", "--port", str(_free_port()),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # printed before the server starts; stopped right after
    finally:
        _stop(proc)
    assert "warning: --host 0.0.0.0: the MLflow UI will accept connections from other machines" in first


@pytest.mark.parametrize("name", ["../../etc", "a/../../b", ".hidden", "x" * 65])
def test_sweep_names_cannot_leave_the_results_dir(tmp_path, name):
    path = write_spec(tmp_path, name="ok", tasks=[{"name": "prefix_sums"}])
    path.write_text(path.read_text().replace("name: ok", f"name: {name}", 1))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "name" in result.output and "slug" in result.output
    assert not (tmp_path / "results").exists()


def test_a_symlinked_sweep_dir_pointing_elsewhere_is_refused(tmp_path):
    path = write_spec(tmp_path, name="linked", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "linked").symlink_to(elsewhere)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "outside the results dir" in result.output
    assert list(elsewhere.iterdir()) == []


class _Payload:
    """Unpickling this would run code (create a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_load_weights_only(tmp_path):
    from fpr_core.train import load_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


SECRETS = {"AWS_SECRET_ACCESS_KEY": "sekrit-aws-8d1f3c", "MLFLOW_TRACKING_PASSWORD": "sekrit-mlflow-51be0a",
           "RAY_AUTH_TOKEN_EXTRA": "sekrit-token-9c2e77"}


def _listeners() -> dict[str, str]:
    """Socket inode -> local address for every TCP socket in LISTEN state."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:] if os.path.exists(table) else []:
            fields = line.split()
            if fields[3] == "0A":
                out[fields[9]] = fields[1]
    return out


def _loopback(address: str) -> bool:
    """Whether a /proc/net/tcp{,6} local address (hex IP:port) is on 127.0.0.0/8 or ::1."""
    ip = _proc_ip(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _process_name(cmd: list[str]) -> str:
    """'raylet', 'gcs_server', 'dashboard.py', 'orchestrator.cli', 'ray::ImplicitFunc', ..."""
    name = Path(cmd[0]).name
    if not name.startswith("python"):
        return name
    rest = [a for a in cmd[1:] if a != "-u"]
    return rest[1] if rest[:1] == ["-m"] else Path(rest[0]).name if rest else name


def listening_processes(root: int) -> dict[str, list[str]]:
    """Command name -> listening local addresses, for ``root`` and every process descended from it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    listeners, out = _listeners(), {}
    for pid in tree:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        addrs = [listeners[f[8:-1]] for f in fds if f.startswith("socket:[") and f[8:-1] in listeners]
        if addrs:
            out.setdefault(_process_name([a.decode() for a in cmd if a]), []).extend(addrs)
    return out


@pytest.mark.slow
def test_secrets_never_reach_results_runs_or_files_and_no_dashboard_listens(tmp_path):
    from mlflow import MlflowClient
    import pandas as pd

    base = {"model": {"dim": 16, "heads": 2}, "solver": {"train_cap": 6, "eval_cap": 8}, "grad": "truncated:2",
            "train": {"steps": 40, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 20,
                      "warmup": 2}, "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2}}
    path = write_spec(tmp_path, name="secrets", base=base,
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    log = tmp_path / "run.log"
    env = {**os.environ, **SECRETS, "RAY_ADDRESS": ""}
    proc = _cli("run", str(path), stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        while "started" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        served = listening_processes(proc.pid)  # while the trial runs
        assert proc.wait(timeout=400) == 0, log.read_text()
    finally:
        _stop(proc)
    # The local Ray serves this machine only: every process of it listens on loopback, none on the
    # dashboard's port, and no MLflow server runs.
    assert {"gcs_server", "raylet"} <= set(served), served
    assert not [n for n in served if "mlflow" in n], served
    assert not any(int(a.rsplit(":", 1)[1], 16) == 8265 for addrs in served.values() for a in addrs), served
    exposed = {name: [a for a in addrs if not _loopback(a)] for name, addrs in served.items()}
    assert not any(exposed.values()), exposed

    sweep_dir = tmp_path / "results" / "secrets"
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(df.status) == {"ok"} and df.versions.notna().all()
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    logged = " ".join(json.dumps([r.data.params, r.data.tags, list(r.data.metrics)]) for r in runs)
    table = df.astype(str).to_csv()
    files = b"".join(p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file())
    for secret in SECRETS.values():
        assert secret not in logged and secret not in table and secret not in log.read_text()
        assert secret.encode() not in files  # MLflow store, artifacts, Tune state, rows, sweep.json
