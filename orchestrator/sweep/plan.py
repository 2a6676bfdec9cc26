"""The edge: a spec file -> the validated spec and every cell it runs, checked and expanded once.

``plan_sweep`` is what the CLI calls before running, validating or printing a sweep: the spec's
shape and each of its values (spec.py), every trial's whole config (expand.py), and the metric
names the scheduler and the search watch (sweep/metrics.py), each error a SpecError naming the file
and the field. What it returns is trusted from here on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from orchestrator.sweep.expand import Cell, SweepGrid, check_learnable_inputs
from orchestrator.sweep.layout import sweep_name
from orchestrator.sweep.metrics import scheduler_metrics, search_metrics
from orchestrator.sweep.spec import SpecError, SweepSpec, load_spec


@dataclass(frozen=True)
class SweepPlan:
    """A validated spec and the grid of cells one run of it trains (``--smoke`` cells when ``smoke``).

    The grid is lazy: it was checked in full, and ``cells()`` walks it one cell at a time."""

    spec: SweepSpec
    path: Path
    smoke: bool
    grid: SweepGrid

    @property
    def name(self) -> str:
        """The sweep's directory name (``<name>-smoke`` for smoke runs)."""
        return sweep_name(self.spec.name, self.smoke)

    @property
    def trial_count(self) -> int:
        return self.grid.trial_count()

    def cells(self, start: int = 0) -> Iterator[Cell]:
        return self.grid.cells(start)


def plan_sweep(path: str | Path, smoke: bool = False) -> SweepPlan:
    """Load, validate and expand a spec; raise SpecError with a user-facing message.

    The full sweep is always validated, also for ``--smoke`` (which then runs its own cells), so a
    smoke run never passes a spec the real run would refuse."""
    path = Path(path)
    spec = load_spec(path)
    grid = SweepGrid(spec, path=path)
    check_learnable_inputs(spec, grid, path)
    check_metrics(spec, [t.splits() for t in grid.tasks], path)
    if smoke:
        grid = SweepGrid(spec, smoke=True, path=path)
    return SweepPlan(spec, path, smoke, grid)


def reused_tuning_seeds(plan: SweepPlan) -> str | None:
    """A warning when ``plan`` is a study (``confirms``) whose seeds include a seed its recipes were
    tuned on: numbers from those seeds are not confirmatory. None when the seeds are disjoint."""
    if plan.spec.confirms is None:
        return None
    profile_path = (plan.path.parent / plan.spec.confirms).resolve()
    profile = load_spec(profile_path)
    seeds = set(plan.spec.seeds) | {s for t in plan.spec.tasks for s in (t.seeds or [])}
    reused = sorted(seeds & set(profile.tuning_seeds))
    if not reused:
        return None
    return (f"{plan.path}: seeds {reused} are tuning_seeds of {plan.spec.confirms} (confirms): its recipes "
            f"were tuned on them, so this study's numbers on those seeds are not confirmatory; use other seeds")


def check_metrics(spec: SweepSpec, task_splits: list[list[str]], path: Path) -> None:
    """Metric names are checked here because Tune's own check is off (intermediate reports carry
    training metrics only, the final one the per-split metrics)."""
    if spec.scheduler.type == "asha":
        allowed = scheduler_metrics()
        if spec.scheduler.metric not in allowed:
            raise SpecError(f"{path}: scheduler.metric: got {spec.scheduler.metric!r}, expected one of {allowed}")
    if spec.search is not None:
        allowed = search_metrics(set.intersection(*(set(s) for s in task_splits)))
        if spec.search.metric not in allowed:
            raise SpecError(f"{path}: search.metric: got {spec.search.metric!r}, expected one of {allowed} "
                            "(a split every task evaluates)")
