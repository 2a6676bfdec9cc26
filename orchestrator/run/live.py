"""What `fpr-sweep status` knows without reading Tune's pickled state: the trials the stored spec
plans, and ``live.json``, the running driver's view of its trials (rewritten atomically on every
trial start and end). Finished trials come from their Parquet files (orchestrator/store/parquet.py).
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from orchestrator.sweep.layout import SweepDir
from orchestrator.run.lock import is_stale, read_holder
from orchestrator.run.record import read_info
from orchestrator.sweep.spec import SpecError


def read_live(sweep_dir: SweepDir | Path) -> dict[str, dict[str, Any]]:
    """trial_id -> {status, task, variant, seed} of the trials a driver is running or retrying
    ({} when no driver runs or the file is unreadable)."""
    holder = read_holder(sweep_dir)
    if holder is None or is_stale(holder):  # left behind by a driver that was killed
        return {}
    try:
        data = json.loads(SweepDir.of(sweep_dir).live.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("trials", {}) if isinstance(data, dict) else {}


def planned_trials(sweep_dir: SweepDir | Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The stored spec's trials (trial_id -> task, variant, seed) and how many more it plans whose
    ids are not known up front (Optuna samples)."""
    from orchestrator.sweep.plan import plan_sweep

    layout = SweepDir.of(sweep_dir)
    if not layout.spec_copy.exists():
        return {}, 0
    try:
        plan = plan_sweep(layout.spec_copy, smoke=bool(read_info(layout).get("smoke")))
    except (SpecError, ImportError, ValueError):  # e.g. a task plugin this shell does not load
        return {}, 0
    if plan.spec.search is not None:
        return {}, plan.trial_count
    return {c.cell_id: {"task": c.task, "variant": c.variant, "seed": c.seed} for c in plan.cells()}, 0


def trial_states(sweep_dir: SweepDir | Path, planned: dict[str, dict[str, Any]], unplanned: int = 0
                 ) -> tuple[dict[str, dict[str, Any]], int]:
    """Every trial of a sweep in one state: finished ones (ok, diverged, stopped, failed...) from
    their rows (``store.parquet.trial_summaries``, the one record of finished trials), running or
    retrying ones from live.json, the rest of ``planned`` pending. Returns trial_id -> {status,
    task, variant, seed, error}, and how many more are pending without an id yet (``unplanned``
    search samples, less those already finished or running beyond the planned ids). What `status`
    lists and what a run's closing summary counts, so the two always agree."""
    from orchestrator.store import parquet

    with parquet.read_only():  # an unreadable file is named, never moved
        states = {s["trial_id"]: dict(s) for s in parquet.trial_summaries(SweepDir.of(sweep_dir).root)}
    for tid, entry in read_live(sweep_dir).items():
        if tid not in states:
            states[tid] = {**entry, "status": entry.get("status", "running"), "error": None}
    extra = len([t for t in states if t not in planned])
    for tid, entry in planned.items():
        states.setdefault(tid, {**entry, "status": "pending", "error": None})
    return states, max(0, unplanned - extra)


class LiveFile:
    """The driver side: records trials as they start, retry and end."""

    def __init__(self, sweep_dir: SweepDir) -> None:
        self.path = sweep_dir.live
        self.trials: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def set(self, trial_id: str, status: str, task: str, variant: str, seed: int) -> None:
        with self._lock:
            self.trials[trial_id] = {"status": status, "task": task, "variant": variant, "seed": seed}
            self._write()

    def drop(self, trial_id: str) -> None:
        with self._lock:
            if self.trials.pop(trial_id, None) is not None:
                self._write()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps({"pid": os.getpid(), "trials": self.trials}))
            os.replace(tmp, self.path)
        except OSError:  # a full disk: status shows these trials as pending meanwhile
            tmp.unlink(missing_ok=True)
