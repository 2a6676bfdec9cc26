"""What one `fpr-sweep run` is given, holds and leaves behind: its options, its session (plan,
sweep folder, tracking store, lock: opened once by launch.py, then passed to the driver) and its
outcome (everything the summary prints). Plain data: no Ray, no MLflow at import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.run.lock import SweepLock
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import SweepPlan
from orchestrator.sweep.spec import SweepSpec


@dataclass
class RunOptions:
    """Command-line knobs of `fpr-sweep run` (each overrides the spec's value when given)."""

    address: Optional[str] = None
    max_concurrent: Optional[int] = None
    tracking_uri: Optional[str] = None
    results_dir: Optional[str] = None
    storage: Optional[str] = None
    yes: bool = False
    """Run a sweep larger than SIZE_GUARD trials without the spec's max_trials."""
    node_timeout_s: float = 1800.0
    """How long to wait for an autoscaler to add the nodes a trial needs (GPUs) before giving up."""
    force: bool = False
    """Take over the sweep's lock when its holder is gone."""
    extend: bool = False
    """Add a changed spec's trials to the sweep on purpose."""
    system_metrics: bool = False
    """Log the driver host's CPU, memory, disk and network use (also a spec option)."""
    require_clean: bool = False
    """Refuse to start from a dirty git tree (also a spec option)."""
    own_process: bool = False
    """This process is `fpr-sweep` itself (not a caller's, e.g. a test's): a local Ray may be kept
    to loopback by what it reads at import."""
    resume_command: str = "the same fpr-sweep run command"


@dataclass
class SweepOutcome:
    """What a run left behind, and everything its summary prints."""

    sweep_dir: SweepDir
    tracking_uri: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    results_path: Optional[Path] = None
    ray_start_seconds: Optional[float] = None
    models: dict[str, int] = field(default_factory=dict)
    """trial_id -> bytes of its kept model (models/<trial_id>.pt)."""
    tracking_problem: Optional[str] = None
    """Set when MLflow writes are still waiting in the spool at the end (the server was unreachable)."""
    stopped: Optional[str] = None
    """Why the run stopped early: a signal ('SIGTERM received'), 'interrupted', or a full disk."""
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    """Mean exact accuracy and loop iterations per (task, variant, split) (store.parquet.accuracy_table)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The failed trials' summaries (trial_id, task, variant, seed, error)."""

    @property
    def exit_code(self) -> int:
        """0 when every trial finished without failing or timing out and MLflow has everything, else 1."""
        return 1 if (self.counts.get("failed", 0) or self.counts.get("timed_out", 0) or self.unfinished or self.tracking_problem
                     or self.stopped) else 0


@dataclass
class RunSession:
    """One `fpr-sweep run` of a plan, once its folder is held: what the driver runs and writes to."""

    plan: SweepPlan
    opts: RunOptions
    sweep_dir: SweepDir
    tracking_uri: str
    lock: SweepLock
    sweep_id: str

    @property
    def spec(self) -> SweepSpec:
        return self.plan.spec

    def open_tracker(self, meta: Any) -> Any:
        """The sweep's SweepTracker (its parent run opened or found again); runs in a thread while
        Ray starts, since mlflow loads there."""
        from orchestrator.store import tracking
        from orchestrator.store.run_info import source_tags

        spec = self.spec
        tags = {"spec_hash": meta.spec_hash, "git_commit": meta.git_commit,
                **source_tags(meta.git_commit, f"fpr-sweep run {self.plan.path}")}
        t = tracking.SweepTracker(self.tracking_uri, meta.sweep, self.sweep_dir.root, tags, sweep_id=self.sweep_id,
                                  description=spec.description.strip(), fence=self.lock.check)
        t.log_sweep_params({"spec": spec.science(), "description": spec.description, "smoke": self.plan.smoke})
        if self.opts.system_metrics or spec.system_metrics:
            t.start_system_metrics()
        return t
