"""Result rows as plain JSON-able dicts, one per (trial, eval split), keyed by the columns of
``orchestrator.store.schema``. Built on the worker for trials that ran (they travel back to the driver
inside the trial's final Tune result) and on the driver for trials that failed or were stopped.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import TYPE_CHECKING, Any, Optional

from fpr_core.config import TRAINED
from fpr_core.evaluate import is_cap_bound
from fpr_core.split_names import ID_SPLIT, parse_split
from orchestrator.sweep.columns import CAP_BOUND, CAPPED_SHARE, Kind, columns, config_cell, config_kinds
from orchestrator.sweep.expand import Trial
from orchestrator.sweep.metrics import protocol_split

if TYPE_CHECKING:
    from fpr_core.experiment import SplitResult


@dataclasses.dataclass(frozen=True)
class SweepMeta:
    """Sweep-level provenance the driver hands to every trial."""

    sweep: str
    spec_hash: str
    git_commit: str
    keep_models: str = "final"
    """The spec's ``keep_models``: 'final' saves each finished trial's model, 'none' saves nothing."""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def config_cells(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``cfg.<section>.<field>`` -> the value as its typed column holds it (``columns.config_cell``;
    None stays null), for every schema config column."""
    out: dict[str, Any] = {}
    for col, kind in config_kinds().items():
        _, section, fld = col.split(".", 2)
        out[col] = config_cell(kind, sections.get(section, {}).get(fld))
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def base_row(trial: Trial, meta: SweepMeta, sections: Optional[dict] = None) -> dict[str, Any]:
    """Columns shared by every row of a trial."""
    c = trial.cell
    return {"sweep": meta.sweep, "trial_id": trial.trial_id, "spec_hash": meta.spec_hash,
            "variant": c.variant, "task": c.task, "task_params": json.dumps(c.task_params, sort_keys=True),
            "train_size": c.train_size, "seed": c.seed, "git_commit": meta.git_commit,
            "finished_at": _now(), **config_cells(sections or trial.sections)}


def placeholder_rows(trial: Trial, meta: SweepMeta, status: str, error: str = "",
                     extra: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """One row per expected split with no metrics: for failed, stopped or diverged trials."""
    rows = []
    for split in trial.cell.splits():
        row = base_row(trial, meta)
        row.update({"split": split, "size": parse_split(split, trial.cell.train_size), "halting": TRAINED, "status": status,
                    "error": error or None, **(extra or {})})
        rows.append(row)
    return rows


def _float(x: Any) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def experiment_rows(trial: Trial, meta: SweepMeta, result: Any, worker: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of a trial that ran: ``result`` is fpr_core's ExperimentResult; ``worker`` holds
    hostname, node_id, versions (where it ran)."""
    tr = result.train
    sections = dict(trial.sections, model=dataclasses.asdict(result.model_cfg_resolved))
    common = {"train_seconds": float(tr.seconds), "train_steps": int(tr.steps),
              "final_loss": _float(tr.final_loss), "device": result.device,
              "difficulty_key": result.difficulty_key, **worker}
    if tr.status != "ok" or not result.splits:
        return placeholder_rows(trial, meta, tr.status, tr.message or f"training ended {tr.status}", common)
    rows = []
    for s in result.splits:
        row = base_row(trial, meta, sections)
        row.update(common)
        row.update(split_fields(s))
        rows.append(row)
    return rows


_CONVERT: dict[Kind, Any] = {"int": int, "float": float, "bool": bool, "floats32": float, "floats": float,
                             "ints": int, "bools": bool}
"""How a value of a column's kind is made plain (numpy scalars -> Python ones; list kinds: per item)."""


def split_fields(s: SplitResult) -> dict[str, Any]:
    """The columns one evaluated split fills (``s`` is fpr_core's SplitResult): split, size, the
    halting protocol, ok status, every ``metric`` column from ``s.result.metrics``, the cap-bound
    flag, and every ``instance`` column from the ``EvalResult`` array of the same name."""
    ev = s.result
    out: dict[str, Any] = {"split": s.split, "size": int(s.size), "halting": s.halting,
                           "status": "ok", "error": None}
    for col in columns("metric"):
        number = _float(ev.metrics.get(col.name))  # NaN (not measured, e.g. probes with eval.diagnostics off) -> null
        out[col.name] = None if number is None else _CONVERT[col.kind](number)
    out[CAP_BOUND] = None if out[CAPPED_SHARE] is None else is_cap_bound(out[CAPPED_SHARE])
    for col in columns("instance"):
        out[col.name] = [_CONVERT[col.kind](v) for v in getattr(ev, col.name)]
    return out


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """What names a row within its trial: (split, halting protocol); a row written before
    protocols existed is 'trained'."""
    return row["split"], row.get("halting") or TRAINED


def evaluated_rows(trial_rows: list[dict[str, Any]], new_splits: list[dict[str, Any]],
                   worker: dict[str, str]) -> list[dict[str, Any]]:
    """A trial's rows after re-evaluating its saved model: every existing row except those of a
    re-evaluated (split, halting protocol), then one row per new one (``split_fields`` dicts) with
    the trial's own columns (config, training provenance) and the evaluating worker's host, node
    and versions. Ordered: the 'trained' rows first, then by protocol, split and size."""
    template = dict(trial_rows[0], capped_share=None, cap_bound=None)
    redone = {row_key(s) for s in new_splits}
    kept = [dict(r, halting=row_key(r)[1]) for r in trial_rows if row_key(r) not in redone]
    fresh = [{**template, **worker, **s, "finished_at": _now()} for s in new_splits]
    return sorted(kept + fresh, key=lambda r: (r["halting"] != TRAINED, r["halting"], r["split"] != ID_SPLIT,
                                               r["size"] or 0))


def residual_curves(result: Any) -> dict[str, list[float]]:
    """Mean residual per loop step, per split (for the convergence plot); a split evaluated under
    another halting protocol than the trial's own is keyed '<split>/<protocol>' (``protocol_split``)."""
    return {protocol_split(s.split, s.halting): [float(v) for v in s.result.residual_curve] for s in result.splits}
