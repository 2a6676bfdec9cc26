"""The cloud recipe, for real: Ray's cluster launcher (`ray up`, `local` provider) brings up a head
and a worker host with the head/worker start commands of cluster/aws-gpu.yaml, a second `ray up`
keeps one MLflow server, the quickstart smoke sweep goes in through Ray Jobs (`ray dashboard`
tunnel + `ray job submit --working-dir`), its rows and MLflow runs land under the head's
~/results, `ray rsync-down` brings them home, and `ray down` stops the cluster.

Each host is a network namespace (joined to the launcher's namespace by veth over a bridge) with
its own PID namespace, home and temp dir, reached by its own sshd. The launcher's `ray stop` kills
every Ray process it can see: inside a PID namespace that is only the host's own, so a Ray
running elsewhere on this machine (another test, a developer's) is never touched; the test checks
that too. Needs root (namespaces, sshd); installs openssh-server/iproute2/rsync with apt when
they are missing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.launcher]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NET = "10.213.47"
"""A private /24 that exists only inside this test's namespaces (no route leads out of them)."""
TOOLS = {"sshd": "/usr/sbin/sshd", "ip": "/usr/sbin/ip", "rsync": "/usr/bin/rsync", "unshare": "/usr/bin/unshare"}
STEP_TIMEOUT = 420


def _ensure_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the launcher test needs root (network and PID namespaces, sshd)")
    if all(Path(p).exists() for p in TOOLS.values()):
        return
    if not shutil.which("apt-get"):
        pytest.skip("openssh-server, iproute2 and rsync are missing and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server", "iproute2", "rsync"], check=True,
                   env=env, capture_output=True, timeout=600)


def _sh(*cmd: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def _pid_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _processes() -> dict[int, list[str]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
    return out


def _private_dir(top: str, own: Path, keep: list[Path]) -> str:
    """Shell lines that put ``own`` in place of ``top`` (/root, /tmp) with the ``keep`` paths that
    live under ``top`` bound back in at the same place."""
    lines = []
    for p in sorted({str(k.resolve()) for k in keep if str(k.resolve()).startswith(top + "/")}):
        inner = f"{own}/{p[len(top) + 1:]}"
        lines.append(f'mkdir -p "{inner}" && mount --rbind "{p}" "{inner}"')
    return "\n".join([*lines, f'mount --rbind "{own}" {top}']) + "\n"


def _host_init(base: Path, home: Path, tmp: Path, sshd_config: Path) -> str:
    """PID 1 of a host: its own /root (ssh expands `~` from the password file, not $HOME, and the
    launcher puts the autoscaler's key and config in `~`) and its own /tmp (a worker node takes the
    head's temp dir *path*; on one shared /tmp the two runtime-env agents would garbage-collect
    each other's job working dirs), with this machine's Python, the repo and the test's folder
    bound back in; then sshd."""
    keep = [REPO, Path(sys.prefix), Path(sys.base_prefix), BIN.resolve().parent, base]
    return ("set -e\n" + _private_dir("/root", home, keep) + _private_dir("/tmp", tmp, keep)
            + f"{TOOLS['sshd']} -D -e -f {sshd_config} &\nwait $!\n")


class Hosts:
    """client (runs the launcher), head and worker: namespaces on a bridge in the client's."""

    def __init__(self, base: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.base = base
        self.ns = {"client": f"fprc-{tag}", "head": f"fprh-{tag}", "worker": f"fprw-{tag}"}
        self.ip = {"client": f"{NET}.1", "head": f"{NET}.2", "worker": f"{NET}.3"}
        self.key = base / "id_ed25519"
        self.sshd: dict[str, subprocess.Popen] = {}
        self.pid_ns: dict[str, str] = {}

    def home(self, host: str) -> Path:
        return self.base / host / "home"

    def up(self) -> None:
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        for ns in self.ns.values():
            _sh(TOOLS["ip"], "netns", "add", ns)
        client = self.ns["client"]
        ipc = [TOOLS["ip"], "-n", client]
        _sh(*ipc, "link", "set", "lo", "up")
        _sh(*ipc, "link", "add", "br0", "type", "bridge")
        _sh(*ipc, "addr", "add", f"{self.ip['client']}/24", "dev", "br0")
        _sh(*ipc, "link", "set", "br0", "up")
        for host in ("head", "worker"):
            ns, iph = self.ns[host], [TOOLS["ip"], "-n", self.ns[host]]
            _sh(*ipc, "link", "add", f"v{host}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh(*ipc, "link", "set", f"v{host}", "master", "br0", "up")
            _sh(*iph, "link", "set", "lo", "up")
            _sh(*iph, "addr", "add", f"{self.ip[host]}/24", "dev", "eth0")
            _sh(*iph, "link", "set", "eth0", "up")
            # Ray finds its node IP through the default route; the client's side has none onward.
            _sh(*iph, "route", "add", "default", "via", self.ip["client"])
            self._start_sshd(host)
        for host in ("head", "worker"):
            self._wait_ssh(host)

    def _start_sshd(self, host: str) -> None:
        d = self.base / host
        home, tmp = self.home(host), d / "t"
        for p in (home, tmp):
            p.mkdir(parents=True, exist_ok=True)
        # Ray runs every remote command as `bash --login -c -i 'source ~/.bashrc; ...'`.
        (home / ".bashrc").write_text(f"export PATH={BIN}:$PATH\n")
        (home / ".fpr-host").write_text(host)
        shutil.copy(f"{self.key}.pub", d / "authorized_keys")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        (d / "sshd_config").write_text("\n".join([
            f"ListenAddress {self.ip[host]}", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "SetEnv RAY_ADDRESS=", "MaxStartups 50", "MaxSessions 50", ""]))
        (d / "init.sh").write_text(_host_init(self.base, home, tmp, d / "sshd_config"))
        Path("/run/sshd").mkdir(exist_ok=True)
        log = open(d / "sshd.log", "w")
        # bash as PID 1 of the host's PID namespace reaps orphans; --kill-child: when unshare dies,
        # so does PID 1, and with it every process of the namespace (Ray, MLflow).
        self.sshd[host] = subprocess.Popen(
            [TOOLS["ip"], "netns", "exec", self.ns[host], TOOLS["unshare"], "--pid", "--fork", "--kill-child",
             "--mount-proc", "--propagation", "private", "bash", str(d / "init.sh")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ssh(self, host: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.client("ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                            "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"root@{self.ip[host]}",
                            "cat ~/.fpr-host", check=False, timeout=30)
            if r.returncode == 0 and r.stdout.strip() == host:
                bash_pid = int(self.sshd[host].pid)
                self.pid_ns[host] = self._child_pid_ns(bash_pid)
                return
            time.sleep(0.5)
        raise AssertionError(f"sshd on {host} did not answer: {r.stdout}{r.stderr}\n"
                             + (self.base / host / "sshd.log").read_text())

    def _child_pid_ns(self, unshare_pid: int) -> str:
        mine = _pid_ns(os.getpid())
        for pid in _processes():
            try:
                if _pid_ns(pid) != mine and os.getpgid(pid) == unshare_pid:
                    return _pid_ns(pid)
            except OSError:
                continue
        raise AssertionError("the host's PID namespace was not found")

    def client_env(self) -> dict[str, str]:
        home, tmp = self.base / "client" / "home", self.base / "client" / "tmp"
        for p in (home, tmp):
            p.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # `ray up` starts Ray 2.60's autoscaler v2 by default, which never launches the `local`
        # provider's workers (it loops on "Adding 1 nodes to satisfy min count"); v1 does.
        return {**env, "HOME": str(home), "TMPDIR": str(tmp), "PATH": f"{BIN}:{env.get('PATH', '')}",
                "RAY_UP_enable_autoscaler_v2": "0"}

    def client(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return _sh(TOOLS["ip"], "netns", "exec", self.ns["client"], *cmd, check=check, timeout=timeout,
                   env=self.client_env(), cwd=REPO)

    def popen_client(self, *cmd: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen([TOOLS["ip"], "netns", "exec", self.ns["client"], *cmd], env=self.client_env(),
                                cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self, host: str) -> dict[int, list[str]]:
        out = {}
        for pid, argv in _processes().items():
            try:
                if _pid_ns(pid) == self.pid_ns.get(host):
                    out[pid] = argv
            except OSError:
                continue
        return out

    def down(self) -> None:
        for proc in self.sshd.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for ns in self.ns.values():
            _sh(TOOLS["ip"], "netns", "del", ns, check=False)


def launcher_config(hosts: Hosts) -> dict:
    """cluster/aws-gpu.yaml with the local provider: same start commands (one CPU per host, as
    both share this machine), same file mounts and sync filters; no cloud set-up commands (the
    hosts share this machine's environment)."""
    aws = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())

    def one_cpu(commands: list[str]) -> list[str]:
        return [c + " --num-cpus=1" if "ray start" in c else c for c in commands]

    return {
        "cluster_name": f"fpr-launcher-{hosts.ns['head'][-6:]}",
        "provider": {"type": "local", "head_ip": hosts.ip["head"], "worker_ips": [hosts.ip["worker"]]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(hosts.key)},
        "min_workers": 1, "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "file_mounts": {"~/fpr-sweep": str(REPO)},
        "rsync_exclude": aws["rsync_exclude"], "rsync_filter": aws["rsync_filter"],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": one_cpu(aws["head_start_ray_commands"]),
        "worker_start_ray_commands": one_cpu(aws["worker_start_ray_commands"]),
    }


def _mlflow_servers(hosts: Hosts) -> list[int]:
    return [pid for pid, argv in hosts.processes("head").items()
            if any(Path(a).name == "mlflow" for a in argv[:2]) and "server" in argv[1:3]]


@pytest.fixture
def hosts():
    _ensure_tools()
    # Short: Ray's socket paths under each host's temp dir must stay within 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="fprl-", dir="/tmp"))
    h = Hosts(base)
    try:
        h.up()
        yield h
    finally:
        h.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sentinel(tmp_path):
    """A process `ray stop` would kill if it could see it (it matches the name "raylet"), outside
    the hosts' namespaces, as any other Ray on this machine is."""
    shutil.copy(shutil.which("sleep"), tmp_path / "raylet")
    proc = subprocess.Popen([str(tmp_path / "raylet"), "3600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_ray_up_job_submit_rsync_down_ray_down(hosts, sentinel, tmp_path):
    started = time.time()
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(launcher_config(hosts)))
    ray = str(BIN / "ray")

    up = hosts.client(ray, "up", "-y", "--no-config-cache", str(config), timeout=STEP_TIMEOUT)
    assert "Cluster launched" in up.stdout + up.stderr or "Useful commands" in up.stdout, up.stdout[-3000:]
    assert len(_mlflow_servers(hosts)) == 1
    again = hosts.client(ray, "up", "-y", "--restart-only", "--no-config-cache", str(config), timeout=STEP_TIMEOUT)
    assert "already running" in again.stdout + again.stderr, again.stdout[-3000:]
    assert len(_mlflow_servers(hosts)) == 1  # a re-run of `ray up` keeps the one server
    up_seconds = time.time() - started
    _wait_for_worker(hosts)

    tunnel = hosts.popen_client(ray, "dashboard", "--port", "8265", str(config), log=tmp_path / "dashboard.log")
    try:
        job, nodes = _submit(hosts, ray, tmp_path)
    finally:
        os.killpg(tunnel.pid, signal.SIGTERM)
        tunnel.wait(timeout=30)
    log = job.stdout + job.stderr
    assert job.returncode == 0, _unboxed(log)[-8000:] + "\n--- the error's last frames:\n" + log[log.rfind("╭"):][-6000:]
    assert "succeeded" in job.stdout, job.stdout[-3000:]

    results = hosts.home("head") / "results"
    rows = pd.read_parquet(results / "quickstart-smoke" / "results.parquet")
    assert rows.trial_id.nunique() == 8 and set(rows.status) == {"ok"}
    assert len(rows) == 8 * 3 and not rows.duplicated(["trial_id", "split"]).any()  # id + 2 OOD sizes
    # Trained on the cluster's nodes. Not necessarily on both: Tune hands a pending trial to a finished
    # trial's actor rather than wait for a new one, so on a loaded machine the head ran all 8 smoke
    # trials before the worker's first actor was up (twice in CI, with both nodes alive). Trials
    # spreading over two nodes is test_multinode's test_two_sweeps_share_the_cluster_and_use_both_nodes.
    assert set(rows.node_id) <= nodes, (rows[["trial_id", "node_id"]].drop_duplicates(), nodes)
    head_commit = _sh("git", "-C", str(REPO), "rev-parse", "HEAD").stdout.strip()
    dirty = bool(_sh("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no").stdout.strip())
    assert set(rows.git_commit) == {head_commit + ("+dirty" if dirty else "")}  # from the uploaded .git
    runs = _mlflow_runs(results / "mlflow" / "mlflow.db", "quickstart-smoke")
    assert sorted(runs.values()) == ["FINISHED"] * 9  # the sweep's parent run + one per trial
    assert len(_run_configs(results / "mlflow" / "artifacts")) == 8  # stored by the server, under ~/results

    synced = tmp_path / "synced"
    hosts.client(ray, "rsync-down", str(config), "~/results/", f"{synced}/", timeout=STEP_TIMEOUT)
    assert (synced / "quickstart-smoke" / "results.parquet").exists()
    assert (synced / "mlflow" / "mlflow.db").exists()
    assert len(_run_configs(synced / "mlflow" / "artifacts")) == 8

    hosts.client(ray, "down", "-y", str(config), timeout=STEP_TIMEOUT)
    assert not [a for a in hosts.processes("head").values() if Path(a[0]).name in ("raylet", "gcs_server")]
    # `ray down` with the local provider runs `ray stop` on the head only; the worker's raylet exits
    # by itself once the head's GCS is gone (Ray's reconnect timeout, 60 s).
    deadline = time.time() + 120
    while _raylets(hosts, "worker") and time.time() < deadline:
        time.sleep(2)
    assert not _raylets(hosts, "worker"), "the worker host's raylet outlived the cluster"
    assert sentinel.poll() is None, "the launcher's `ray stop` reached a process outside the hosts"
    print(f"ray up (twice) {up_seconds:.0f} s; whole launcher test {time.time() - started:.0f} s")


def _raylets(hosts: Hosts, host: str) -> list[int]:
    return [pid for pid, argv in hosts.processes(host).items() if argv and Path(argv[0]).name == "raylet"]


def _wait_for_worker(hosts: Hosts, timeout: float = 240) -> None:
    """`ray up` returns once the head is up; the head's autoscaler then sets up the worker host."""
    deadline = time.time() + timeout
    while not _raylets(hosts, "worker") and time.time() < deadline:
        time.sleep(1)
    if not _raylets(hosts, "worker"):
        logs = sorted((hosts.base / "head" / "t" / "ray").glob("session_latest/logs/monitor*"))
        raise AssertionError("the autoscaler did not start the worker host:\n"
                             + "\n".join(p.read_text()[-3000:] for p in logs))


def _wait_for_two_alive_nodes(hosts: Hosts, ray: str, timeout: float = 240) -> set[str]:
    """The node ids of both hosts, once the head's GCS counts both alive (a worker's raylet process
    exists a while before that)."""
    deadline = time.time() + timeout
    alive = []
    while time.time() < deadline:
        listed = hosts.client(ray, "list", "nodes", "--address", "http://127.0.0.1:8265", "--filter", "state=ALIVE",
                              "--format", "json", check=False, timeout=60)
        if listed.returncode == 0:
            out = listed.stdout
            alive = json.loads(out[out.find("["):] or "[]") if "[" in out else []
            if len(alive) == 2:
                return {node["node_id"] for node in alive}
        time.sleep(2)
    raise AssertionError(f"the head's GCS never counted both hosts alive: {alive}")


def _submit(hosts: Hosts, ray: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    deadline = time.time() + 120
    while time.time() < deadline:  # the tunnel is up when the Jobs API answers
        probe = hosts.client(ray, "job", "list", "--address", "http://127.0.0.1:8265", check=False, timeout=60)
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        raise AssertionError("Jobs API not reachable through `ray dashboard`:\n" + probe.stdout + probe.stderr
                             + (tmp_path / "dashboard.log").read_text())
    nodes = _wait_for_two_alive_nodes(hosts, ray)
    # Checkpoints on storage both hosts reach (a folder outside their own /root), as s3:// in the recipe.
    # .git goes up with the code (Ray leaves it out by default), so the run can name its commit.
    job = hosts.client("env", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES=.venv,venv,__pycache__",
                       ray, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(REPO),
                       "--", "fpr-sweep", "run", "sweeps/quickstart.yaml", "--smoke", "--address", "auto",
                       "--results-dir", "~/results", "--tracking-uri", "http://127.0.0.1:5000",
                       "--storage-path", str(hosts.base / "shared"), check=False, timeout=STEP_TIMEOUT + 180)
    (tmp_path / "job.log").write_text(job.stdout + job.stderr)
    return job, nodes


def _run_configs(artifacts: Path) -> list[Path]:
    """The config.json artifact of each trial's run (kept models carry one of their own)."""
    return [p for p in artifacts.rglob("config.json") if "models" not in p.relative_to(artifacts).parts]


def _unboxed(log: str) -> str:
    """A log without the frames of rich tracebacks (their last line, the error, stays)."""
    return "\n".join(line for line in log.splitlines() if not line.lstrip().startswith(("│", "╭", "╰")))


def _mlflow_runs(db: Path, experiment: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment} in {db}"
    return {r.info.run_id: r.info.status for r in client.search_runs([exp.experiment_id], max_results=1000)}
