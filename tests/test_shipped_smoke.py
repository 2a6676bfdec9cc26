"""Every shipped thing runs: each sweeps/*.yaml through `fpr-sweep run --smoke`, each
benchmarks/bench_*.py with --smoke, as fresh processes (what a user types)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.store.schema import FINAL_STATUSES
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import plan_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))
BENCHES = sorted((REPO / "benchmarks").glob("bench_*.py"))


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def gpus() -> int:
    import torch

    return torch.cuda.device_count()


def test_every_spec_and_benchmark_is_covered():
    assert {p.name for p in SPECS} >= {"quickstart.yaml", "ood_generalization_cpu.yaml", "ood_generalization.yaml"}
    assert len(BENCHES) >= 6


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_runs_with_smoke(spec, tmp_path):
    plan = plan_sweep(spec, smoke=True)
    command = ["-m", "orchestrator.cli", "run", str(spec), "--smoke", "--results-dir", str(tmp_path)]
    if plan.spec.resources.gpu > gpus():
        # A GPU study on a machine without one: it stops before any trial, saying what to change.
        done = run(command, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "resources.gpu" in done.stderr and "Traceback" not in done.stderr
        return
    done = run(command, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pq.read_table(SweepDir.under(tmp_path, plan.spec.name, smoke=True).results,
                          columns=["trial_id", "status"]).to_pylist()
    assert {r["trial_id"] for r in table} == {c.cell_id for c in plan.cells()}
    assert {r["status"] for r in table} <= set(FINAL_STATUSES)


@pytest.mark.parametrize("bench", BENCHES, ids=[p.stem for p in BENCHES])
def test_every_benchmark_runs_with_smoke(bench):
    done = run([str(bench), "--smoke"], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if bench.stem == "bench_orchestration":
        # The floor is the fresh side-by-side loops: they pay the process start-up the warmed ones skip.
        numbers = json.loads(done.stdout.strip().splitlines()[-1])
        assert numbers["fresh_side_by_side_s"] > numbers["side_by_side_s"]
        assert numbers["floor_with_ray_start"] > numbers["floor"] > 1.0
        assert "floor (fresh side-by-side loops" in done.stdout
