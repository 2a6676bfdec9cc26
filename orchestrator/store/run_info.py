"""What a sweep's MLflow runs say about themselves, as plain data (no mlflow import here; the
tracker in tracking.py writes it): run descriptions in words, the standard source and user tags,
the dataset records behind MLflow's Datasets column, and the sweep's summary metrics.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from orchestrator.store.schema import STATUSES
from orchestrator.sweep.expand import Trial
from orchestrator.sweep.metrics import best_ood_metric, best_variant_tag, sweep_count_metric

SOURCE_NAME = "fpr-sweep"


@dataclass(frozen=True)
class DatasetRecord:
    """One generated split of a trial as MLflow's dataset input shows it."""

    name: str
    """``<task>/<split>``, e.g. ``prefix_sums/ood_32``."""
    digest: str
    """Content hash of the split's arrays (fpr_core.experiment.data_digest)."""
    source: str
    """JSON: how to regenerate it (generator, version, parameters, size, instances, seed)."""
    profile: str
    """JSON: the same facts, shown by the UI as the dataset's profile."""
    context: str
    """``training`` or ``evaluation`` (MLflow's dataset context tag)."""


def trial_description(trial: Trial) -> str:
    """The variant in words, e.g. 'prefix_sums trained at size 16, evaluated at 16 (id) and 32, 64
    (OOD); model.recall = standard, model.outer_norm = rms; seed 0.'"""
    c = trial.cell
    params = f" {json.dumps(c.task_params, sort_keys=True)}" if c.task_params else ""
    ood = ", ".join(map(str, c.ood_sizes)) or "no larger size"
    varied = {**c.axis_values, **trial.search_values}
    setting = "; ".join(f"{k} = {v}" for k, v in varied.items()) or "the base config"
    return (f"{c.task}{params} trained at size {c.train_size}, evaluated at {c.train_size} (id) and "
            f"{ood} (OOD); {setting}; seed {c.seed}. Trial {trial.trial_id}.")


def source_tags(git_commit: str, entry_point: Optional[str] = None) -> dict[str, str]:
    """MLflow's standard tags: ``mlflow.source.name/type``, ``mlflow.source.git.commit`` (a
    '+dirty' suffix dropped: MLflow expects a bare hash; the ``git_commit`` tag keeps it) and
    ``mlflow.user``."""
    tags = {"mlflow.source.name": entry_point or " ".join([SOURCE_NAME, *sys.argv[1:2]]),
            "mlflow.source.type": "LOCAL", "mlflow.user": _user()}
    bare = git_commit.split("+", 1)[0]
    if bare and bare != "unknown":
        tags["mlflow.source.git.commit"] = bare
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return os.environ.get("USER", "unknown")


def dataset_records(task: str, task_params: dict[str, Any], seed: int,
                    datasets: Iterable[dict[str, Any]]) -> list[DatasetRecord]:
    """One record per split a trial generated; ``datasets`` are fpr_core DatasetInfo dicts (split,
    size, n, digest) plus the task's ``generator_version``, as the worker reports them."""
    out = []
    for d in datasets:
        facts = {"task": task, "params": task_params, "split": d["split"], "size": int(d["size"]),
                 "instances": int(d["n"]), "seed": seed, "generator": f"fpr_core.tasks.{task}",
                 "generator_version": str(d.get("generator_version", "")), "content_hash": d["digest"]}
        text = json.dumps(facts, sort_keys=True)
        out.append(DatasetRecord(f"{task}/{d['split']}", d["digest"][:32], text, text,
                                 "training" if d["split"] == "train" else "evaluation"))
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sweep_summary(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """Summary metrics of the parent run from the results rows: ``trials/<status>`` counts and, per
    task, ``best_ood_acc/<task>`` = the highest seed-mean exact accuracy at the task's largest
    evaluated size (tag ``best_variant/<task>`` names the variant)."""
    statuses: dict[str, str] = {}
    for r in rows:
        statuses.setdefault(r["trial_id"], r["status"])
    metrics: dict[str, float] = {sweep_count_metric("total"): float(len(statuses))}
    for status in STATUSES:
        metrics[sweep_count_metric(status)] = float(sum(1 for s in statuses.values() if s == status))
    tags: dict[str, str] = {}
    ok = [r for r in rows if r["status"] == "ok" and r["split"] != "id" and _is_number(r.get("exact_acc"))
          and (r.get("halting") or "trained") == "trained"]  # the trials' own halting: protocols never pooled
    for task in sorted({r["task"] for r in ok}):
        mine = [r for r in ok if r["task"] == task]
        largest = max(r["size"] for r in mine)
        per_variant: dict[str, list[float]] = {}
        for r in mine:
            if r["size"] == largest:
                per_variant.setdefault(r["variant"], []).append(r["exact_acc"])
        variant, accs = max(per_variant.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
        metrics[best_ood_metric(task)] = sum(accs) / len(accs)
        tags[best_variant_tag(task)] = f"{variant} (size {largest})"
    return metrics, tags
