"""The results table: one row per (trial, eval split). Fixed up front and versioned, because
pyarrow.dataset takes its schema from the first file it reads and silently drops later columns.

Config columns are flattened with a ``cfg.`` prefix (``cfg.model.recall``, ``cfg.train.lr``) and
stored as plain strings (``str(value)``; null for None) so every file has the same types: the set of
config fields is fixed by fpr_core's dataclasses, so ``config_columns()`` lists them all.
"""
from __future__ import annotations

import pyarrow as pa

from orchestrator.sweep.sections import SECTIONS, field_names

SCHEMA_VERSION = "3"
"""2: per-instance halting flags, the implicit input-derivative, basin-jump fractions, the probe
subset, and the test-time compute curve (schema-1 tables load with these columns null).
3: the halting protocol of each row (``halting``; older rows read as 'trained'), the share of
instances that ended at the cap and the cap-bound flag (docs/halting.md)."""

STATUSES = ("ok", "failed", "diverged", "stopped", "timed_out")
FINAL_STATUSES = ("ok", "diverged", "stopped", "timed_out")
"""A trial whose rows file holds one of these is done; 'failed' trials run again on resume. A
'timed_out' trial (it ran past the spec's max_trial_minutes) is done too: a resume under the same
limit would only time it out again. To give it more time, run the spec with a higher limit into a
new results folder (docs/faults.md)."""

_BASE_FIELDS = [
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("spec_hash", pa.string()),
    pa.field("variant", pa.string()),          # human label of the grid cell, e.g. "recall=none,outer_norm=rms"
    pa.field("task", pa.string(), nullable=False),
    pa.field("task_params", pa.string()),      # JSON of task params, e.g. {"group": "S5"}
    pa.field("split", pa.string(), nullable=False),  # "id" or "ood_<size>" ("train" never appears)
    pa.field("halting", pa.string()),          # halting protocol of the row: trained, paper, long, ... (null = trained)
    pa.field("size", pa.int64()),
    pa.field("train_size", pa.int64()),
    pa.field("n", pa.int64()),
    pa.field("exact_acc", pa.float64()),       # verifier-based, per instance
    pa.field("token_acc", pa.float64()),       # masked positions
    pa.field("iters_mean", pa.float64()),
    pa.field("iters_p50", pa.float64()),
    pa.field("iters_p95", pa.float64()),
    pa.field("eval_cap", pa.int64()),
    pa.field("reachability", pa.float64()),    # fraction with r < tol within the cap
    pa.field("cycled_frac", pa.float64()),
    pa.field("capped_share", pa.float64()),    # share of instances that ended at the cap (not converged, not cycled)
    pa.field("cap_bound", pa.bool_()),         # capped_share > 0.05: the split measures the cap (evaluate.CAP_BOUND_SHARE)
    pa.field("residual_median", pa.float64()),
    pa.field("input_dependence", pa.float64()),      # schema 1 only: finite difference ||z*(x)-z*(x')|| / ||x-x'||
    pa.field("input_derivative", pa.float64()),      # median ||(I-J)^-1 (dF/dx) v|| at verified z*, unit v
    pa.field("basin_jump_1e-4", pa.float64()),       # share of verified z* that jump under a 1e-4*||x|| perturbation
    pa.field("basin_jump_1e-3", pa.float64()),
    pa.field("basin_jump_1e-2", pa.float64()),
    pa.field("probe_n", pa.int64()),                 # instances in the seeded random probe subset
    pa.field("probe_verified", pa.float64()),        # share of the subset at a verified z* (solver r < tol)
    pa.field("fixed_point_spread", pa.float64()),    # spread of z* across distinct inputs
    pa.field("path_independence", pa.float64()),     # distance of z* reached from different z0 (0 = independent)
    pa.field("spectral_radius", pa.float64()),       # rho(dF/dz) at the solver's z* (schema 1: at the probe's rest state)
    pa.field("instance_iters", pa.list_(pa.float32())),       # per instance, for iterations vs difficulty
    pa.field("instance_difficulty", pa.list_(pa.float32())),  # per instance, task.difficulty_key
    pa.field("instance_correct", pa.list_(pa.bool_())),
    pa.field("instance_converged", pa.list_(pa.bool_())),    # r < tol before the cap
    pa.field("instance_cycled", pa.list_(pa.bool_())),       # halted on a period-2 cycle
    pa.field("budget_iters", pa.list_(pa.int64())),          # test-time compute curve: loop budgets ...
    pa.field("budget_acc", pa.list_(pa.float64())),          # ... and the exact accuracy read out at each
    pa.field("difficulty_key", pa.string()),
    pa.field("train_seconds", pa.float64()),
    pa.field("eval_seconds", pa.float64()),
    pa.field("train_steps", pa.int64()),
    pa.field("final_loss", pa.float64()),
    pa.field("status", pa.string(), nullable=False),  # one of STATUSES
    pa.field("error", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("git_commit", pa.string()),
    pa.field("versions", pa.string()),         # JSON {"torch": ..., "ray": ..., ...}
    pa.field("hostname", pa.string()),
    pa.field("node_id", pa.string()),
    pa.field("device", pa.string()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]


def config_columns() -> list[str]:
    """Every flattened config column, ``cfg.<section>.<field>``, in a fixed order."""
    cols = []
    for section in SECTIONS:
        cols += [f"cfg.{section}.{name}" for name in field_names(section)]
    return cols


def results_schema() -> pa.Schema:
    fields = list(_BASE_FIELDS) + [pa.field(c, pa.string()) for c in config_columns()]
    return pa.schema(fields, metadata={"fpr_sweep.schema_version": SCHEMA_VERSION})
