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
    assert "mlflow server --host 127.0.0.1" in " ".join(head.split())


def test_schema_check_is_real_it_rejects_an_unknown_field():
    cfg = _load(CONFIGS[0])
    node = next(iter(cfg["available_node_types"]))
    cfg["available_node_types"][node]["not_a_ray_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_at_least_one_cluster_config_ships():
    assert CONFIGS, "cluster/ holds a Ray cluster-launcher config"
