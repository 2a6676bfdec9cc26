"""Pre-start checks: a bad or unreachable --address is refused within seconds (ray.init would retry
for minutes), with nothing created; the GPU node types an autoscaler config offers; the CPU profile
named for a GPU study."""
from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_spec
from orchestrator.cli import app
from orchestrator.run.preflight import (AddressError, check_address, cpu_profile_for, gpu_node_types,
                                        node_types_from_launcher_config, nodes_needed)

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("address, match", [
    ("127.0.0.1:1", "cannot connect"),
    ("no-such-host.invalid:6379", "unknown host"),
    ("127.0.0.1", "expected 'auto', HOST:PORT"),
    ("http://127.0.0.1:8265", "HTTP address"),
])
def test_bad_addresses_are_refused_within_seconds(address, match):
    started = time.time()
    with pytest.raises(AddressError, match=match):
        check_address(address)
    assert time.time() - started < 11


def test_a_port_that_answers_but_is_not_ray_is_refused():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(AddressError, match="not Ray"):
            check_address(f"127.0.0.1:{server.server_address[1]}", timeout=3)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_a_real_ray_gcs_passes(ray_session):
    check_address(ray_session.get_runtime_context().gcs_address)


def test_run_with_an_unreachable_address_exits_2_fast_and_creates_nothing(tmp_path):
    spec = write_spec(tmp_path, name="addr", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    started = time.time()
    result = runner.invoke(app, ["run", str(spec), "--address", f"127.0.0.1:{_closed_port()}"])
    took = time.time() - started
    assert result.exit_code == 2 and "cannot connect" in result.output, result.output
    assert took < 30
    assert not (tmp_path / "results").exists()
    print(f"bad --address refused in {took:.1f} s")


def test_gpu_node_types_of_the_shipped_aws_recipe_after_ray_fills_in_resources():
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 4, "GPU": 1}  # what `ray up` writes
    types = node_types_from_launcher_config(config)
    assert [t.name for t in types] == ["gpu_worker"]
    fit = gpu_node_types(types, gpus_per_trial=0.5, cpus_per_trial=2)
    assert [t.name for t in fit] == ["gpu_worker"] and fit[0].max_count == 8
    assert nodes_needed(fit, 0.5, trials=5) == 3  # two trials per GPU node
    assert gpu_node_types(types, gpus_per_trial=2, cpus_per_trial=1) == []  # no node type has 2 GPUs
    assert gpu_node_types(types, gpus_per_trial=0.5, cpus_per_trial=8) == []


def test_the_gpu_study_names_its_cpu_profile():
    assert cpu_profile_for(REPO / "sweeps" / "ood_generalization.yaml") == REPO / "sweeps" / "ood_generalization_cpu.yaml"
    assert cpu_profile_for(REPO / "sweeps" / "quickstart.yaml") is None
