"""Every shipped thing runs: each sweeps/*.yaml through `fpr-sweep run --smoke`, each
benchmarks/bench_*.py with --smoke, as fresh processes (what a user types)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.store.schema import FINAL_STATUSES
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import plan_sweep

from conftest import write_spec

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


N = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
"""One printed number (nan and inf too, so that they fail the range check instead of not matching)."""

PRINTED: dict[str, list[tuple[str, str, float, float]]] = {
    # benchmark: (what, pattern with one N group, low, high). Every pattern must match at least once,
    # and every number it matches must lie in [low, high]: a ratio of two timings of the same work is
    # positive and finite, and far outside these bounds it is a unit or bookkeeping error, not noise
    # (--smoke sizes are tiny and the machine may be shared, so the bounds are wide).
    "bench_adaptive_compute": [
        ("per-sample / batch-level halting time", rf"ratio per-sample / batch-level = {N}", 0.01, 10),
        ("per-sample halting / oracle time", rf"ratio per-sample / oracle\s+= {N}", 0.01, 10)],
    "bench_ensemble": [  # rows "K  seeds/h  x K=1  seeds/h (wall)  x K=1  MiB/member  x K=1"
        ("seeds/h (CPU) against K=1", rf"(?m)^\s*[1248]\s+[\d.]+\s+{N}\s", 0.01, 100),
        ("memory per member against K=1", rf"(?m)^\s*[1248]\s+(?:[\d.]+\s+){{5}}{N}$", 0.5, 5)],
    "bench_eval_diagnostics": [
        ("eval with / without diagnostics", rf"(?m)^\s*\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+{N}$", 0.2, 1000)],
    "bench_memory": [
        ("peak memory, long / short loop", rf"peak delta ratio {N}", 0.1, 10),
        ("bytes saved for backward, long / short loop", rf"saved ratio {N}", 0.1, 10)],
    "bench_orchestration": [
        ("fpr-sweep run / loop per slot", rf"overhead ratio fpr-sweep / \(loop / \d+ slots\) = {N}x", 0.3, 500),
        ("the same without Ray's start", rf"without Ray start-up {N}x \(goal", 0.1, 500),
        ("side-by-side loops / loop per slot", rf"= {N}x the loop per slot", 0.3, 50),
        ("fpr-sweep run / side-by-side loops", rf"fpr-sweep run / side-by-side loops = {N}x", 0.1, 500),
        ("floor", rf"no orchestration\): {N}x without Ray start-up", 0.3, 500)],
    "bench_reeval": [
        ("seconds of the first eval", rf'"eval_wall_s": {N}', 0.01, 3600),
        ("rows the first eval added", rf'"rows_added": {N}', 1, 1e6)],
    "bench_report": [("seconds for the report", rf"total {N} s", 0.001, 900)],
    "bench_scale": [
        ("collect / one dataset scan", rf"= {N}x one dataset scan", 0.01, 100),
        ("seconds per figure", rf"(?m)after {N} s", 0.001, 900),
        ("seconds to the first trial's start", rf"first trial starts.*after {N} s,", 0.1, 600)],
    "bench_task_generation": [
        ("instances per second", rf"(?m)^\S+\s+\d+\s+\d+\s+[\d.e+-]+\s+{N}", 0.01, 1e9)],
    "bench_task_profiles": [
        ("exact accuracy", rf"\bexact={N}", 0, 1), ("token accuracy", rf"\btoken={N}", 0, 1),
        ("reachability", rf"\breach={N}", 0, 1)],
    "bench_throughput": [("ours / baseline throughput", rf"throughput ours / baseline = {N}", 0.02, 50)],
}
"""The figures each benchmark prints that its smoke test checks."""


def check_printed(bench: str, out: str) -> None:
    """Every figure `bench` prints (PRINTED) is there, and each value is a number in its range."""
    assert bench in PRINTED, f"{bench} prints no checked figure: add its ratios to PRINTED in {__file__}"
    for what, pattern, low, high in PRINTED[bench]:
        values = [float(v) for v in re.findall(pattern, out)]
        assert values, f"{bench}: no {what} in its output (pattern {pattern!r}):\n{out[-3000:]}"
        bad = [v for v in values if not (math.isfinite(v) and low <= v <= high)]
        assert not bad, f"{bench}: {what} {bad} outside [{low:g}, {high:g}]:\n{out[-3000:]}"


def test_every_benchmark_has_checked_figures():
    assert sorted(PRINTED) == sorted(p.stem for p in BENCHES)


def smoke_args(bench: str, tmp_path: Path) -> list[str]:
    """Arguments after --smoke. bench_reeval trains a sweep before it re-evaluates it: by default
    the quickstart's --smoke sweep, which test_every_shipped_spec_runs_with_smoke[quickstart] already
    runs (minutes of maze trials); here a two-trial prefix-sums sweep, enough for every step of the
    benchmark (train, keep models, evaluate a new size, evaluate it again)."""
    if bench != "bench_reeval":
        return []
    spec = write_spec(tmp_path, name="reeval", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"model.recall": ["none", "standard"]})
    return ["--spec", str(spec)]


@pytest.mark.parametrize("bench", BENCHES, ids=[p.stem for p in BENCHES])
def test_every_benchmark_runs_with_smoke(bench, tmp_path):
    done = run([str(bench), "--smoke", *smoke_args(bench.stem, tmp_path)], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_printed(bench.stem, done.stdout)
    if bench.stem == "bench_orchestration":
        # The floor is the fresh side-by-side loops: they pay the process start-up the warmed ones skip.
        numbers = json.loads(done.stdout.strip().splitlines()[-1])
        assert numbers["fresh_side_by_side_s"] > numbers["side_by_side_s"]
        assert numbers["floor_with_ray_start"] > numbers["floor"] > 1.0
        assert "floor (fresh side-by-side loops" in done.stdout
    if bench.stem == "bench_reeval":
        # The second call finds every size done: it evaluates nothing and takes less than the first.
        numbers = json.loads(done.stdout[done.stdout.find("\n{") + 1:])
        assert numbers["second_eval_nothing"] is True
        assert 0 < numbers["second_eval_wall_s"] < numbers["eval_wall_s"]
