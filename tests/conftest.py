"""Shared fixtures: one Ray session for every in-process Ray test (ray.init costs ~5-10 s here),
tiny sweep specs written to tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

TINY_BASE = {
    "model": {"dim": 16, "heads": 2},
    "solver": {"train_cap": 6, "eval_cap": 8},
    "grad": "truncated:2",
    "train": {"steps": 10, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 5,
              "warmup": 2},
    "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2},
}
"""A budget small enough for a trial to finish in seconds (most of it is worker start-up)."""


def write_spec(directory: Path, **spec) -> Path:
    """Write a sweep spec (tiny budget unless ``base`` is given) and return its path."""
    spec.setdefault("base", TINY_BASE)
    spec.setdefault("results_dir", str(directory / "results"))
    path = directory / f"{spec['name'].replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole test session; run_sweep joins it instead of starting its own."""
    import ray

    ray.shutdown()  # something may have started Ray implicitly (e.g. ray.get_runtime_context())
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()
