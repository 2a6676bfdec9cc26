"""The cluster-launcher config is checked offline against Ray's own cluster-config schema
(`ray up` itself needs cloud credentials and network)."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_passes_rays_schema(path):
    prepared = prepare_config(copy.deepcopy(_load(path)))
    validate_config(prepared)
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    gpu_types = [n for n in node_types if n != prepared["head_node_type"]]
    assert gpu_types, "a GPU worker node type is declared"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_installs_the_package_and_keeps_services_on_loopback(path):
    cfg = _load(path)
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "fpr-sweep" in setup
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert [c for c in cfg["head_start_ray_commands"] if "mlflow" in c] == ["bash ~/fpr-sweep/cluster/mlflow-server.sh"]
    assert "mlflow server --host 127.0.0.1" in (CLUSTER_DIR / "mlflow-server.sh").read_text()


INSTANCE_TYPES = {"g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1)}
"""vCPUs and GPUs of the AWS GPU instance types a config may name (AWS's published figures)."""


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_gpu_workers_can_write_s3_and_pack_two_trials_per_gpu(path):
    from orchestrator.sweep.spec import load_spec

    cfg = _load(path)
    gpu_study = load_spec(CLUSTER_DIR.parent / "sweeps" / "ood_generalization.yaml").resources
    for name, node in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        assert node["node_config"]["IamInstanceProfile"], f"{name}: workers write s3:// checkpoints"
        cpus, gpus = INSTANCE_TYPES[node["node_config"]["InstanceType"]]
        per_node = min(cpus // gpu_study.cpu, gpus / gpu_study.gpu)
        assert per_node / gpus == 2, (name, cpus, gpus, gpu_study)


def test_schema_check_is_real_it_rejects_an_unknown_field():
    cfg = _load(CONFIGS[0])
    node = next(iter(cfg["available_node_types"]))
    cfg["available_node_types"][node]["not_a_ray_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_at_least_one_cluster_config_ships():
    assert CONFIGS, "cluster/ holds a Ray cluster-launcher config"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_servers(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"server" in argv and str(port).encode() in argv and any(a.endswith(b"mlflow") for a in argv[:3]):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_head_start_command_starts_one_mlflow_server_however_often_it_runs(tmp_path):
    """As `ray up` runs it (through `bash -c`), twice, and once more after a stale pid file."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "FPR_RESULTS": str(tmp_path / "results"), "FPR_MLFLOW_PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = CLUSTER_DIR / "mlflow-server.sh"
    pidfile = tmp_path / "results" / "mlflow" / "server.pid"

    def start() -> str:
        r = subprocess.run(["bash", "-c", f"bash {script}"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    try:
        assert "started" in start()
        assert "already running" in start()
        assert len(_mlflow_servers(port)) == 1
        pidfile.write_text("999999999")  # stale (a pid that cannot exist): the port probe still finds it
        assert "not starting a second server" in start()
        assert len(_mlflow_servers(port)) == 1
        assert (tmp_path / "results" / "mlflow" / "mlflow.db").exists()  # under the synced results
    finally:
        for pid in _mlflow_servers(port):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
