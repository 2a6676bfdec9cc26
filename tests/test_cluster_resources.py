"""GPU requests against real Ray clusters: a fixed cluster without GPUs refuses at once (exit 2, the
study's CPU profile named, no sweep folder, no RUNNING MLflow run); a cluster whose autoscaler has
a GPU node type gets asked for one and the run waits for it ("waiting for 1 GPU node"), then
trains there. The autoscaling cluster is Ray's own fake multi-node provider (GPU nodes declared,
trained on CPU), run in a network + PID namespace of its own so it cannot meet another Ray."""
from __future__ import annotations

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
from typer.testing import CliRunner

from conftest import TINY_BASE, write_spec
from orchestrator.cli import app

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
runner = CliRunner()
TASK = {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}


@pytest.mark.slow
def test_a_fixed_cluster_without_gpus_refuses_at_once_and_leaves_nothing(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    spec = write_spec(tmp_path, name="gpu-study", tasks=[TASK], resources={"cpu": 1, "gpu": 0.5})
    shutil.copy(spec, tmp_path / "gpu-study_cpu.yaml")  # the study's CPU profile, next to it
    store = f"sqlite:///{tmp_path / 'outside.db'}"  # a store outside the sweep folder survives the refusal
    started = time.time()
    result = runner.invoke(app, ["run", str(spec), "--tracking-uri", store])
    took = time.time() - started
    assert result.exit_code == 2, result.output
    assert "asks for 0.5 GPU" in result.output and "no autoscaler" in result.output
    assert "gpu-study_cpu.yaml" in " ".join(result.output.split())
    assert took < 30
    assert not (tmp_path / "results").exists()  # no empty sweep folder
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("gpu-study").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]  # the parent run, not left RUNNING


FAKE_CLUSTER = {
    "cluster_name": "fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
    # As Ray's fake_multi_node/example.yaml: nodes are local raylets, nothing to set up over SSH.
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
    },
    "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


@pytest.mark.slow
def test_the_run_waits_for_the_autoscaler_to_add_a_gpu_node_then_trains_there(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("needs root for a network + PID namespace (the fake cluster's GCS takes port 6379)")
    d = tmp_path
    (d / "cluster.yaml").write_text(yaml.safe_dump(FAKE_CLUSTER))
    spec = write_spec(d, name="gpu-wait", tasks=[TASK], resources={"cpu": 1, "gpu": 0.5},
                      base={**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 4}})
    short_tmp = Path(tempfile.mkdtemp(prefix="fprg-", dir="/tmp"))  # Ray's socket paths: <= 107 bytes
    script = d / "inside.sh"
    script.write_text(f"""set -e
export RAY_FAKE_CLUSTER=1 HOME={d} TMPDIR={short_tmp} RAY_ADDRESS= PATH={BIN}:$PATH PYTHONPATH={REPO}
mkdir -p $TMPDIR
ray start --head --port 6379 --num-cpus 1 --num-gpus 0 --include-dashboard=false \\
  --autoscaling-config={d / 'cluster.yaml'} > {d / 'head.log'} 2>&1
set +e
python -m orchestrator.cli run {spec} --address 127.0.0.1:6379 --node-timeout 4 > {d / 'run.log'} 2>&1
echo "rc=$?" >> {d / 'run.log'}
cp $TMPDIR/ray/session_latest/logs/monitor.* {d}/ 2>/dev/null || true
""")
    ns = f"fprg-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # --kill-child: when the script ends, PID 1 of the namespace goes and takes every Ray process.
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--pid", "--fork", "--kill-child",
                                 "--mount-proc", "bash", str(script)], cwd=REPO, start_new_session=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")})
        try:
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(short_tmp, ignore_errors=True)
    log = (d / "run.log").read_text() if (d / "run.log").exists() else (d / "head.log").read_text()
    assert log.rstrip().endswith("rc=0"), log[-4000:]
    assert "waiting for 1 GPU node (gpu_node) from the autoscaler" in log
    assert "GPU node up after" in log
    rows = pd.read_parquet(d / "results" / "gpu-wait" / "results.parquet")
    assert set(rows.status) == {"ok"}
    assert set(rows.node_id) == {"fffffffffffffffffffffffffffffffffffffffffffffffffff00001"}  # the added node
