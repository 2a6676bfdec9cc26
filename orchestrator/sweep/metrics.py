"""Every metric and result key name of a sweep, in one place: what a trial reports to Tune, what
the driver logs to MLflow, and which of them a spec may name (``scheduler.metric``,
``search.metric``). A renamed metric changes one line here.

Names are ``<prefix>/<split-or-name>``: ``train/loss`` during training, ``acc/ood_64`` at the end.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from fpr_core.config import TRAINED
from fpr_core.split_names import split_name
from orchestrator.sweep.columns import COLUMNS

TRAIN_PREFIX = "train"
"""Training metrics, reported every ``train.log_every`` steps as ``train/<name>``."""
TRAIN_METRICS = ("loss", "lr", "grad_norm", "token_acc", "exact_acc", "iters_mean")
"""What fpr_core's trainer passes to ``on_log`` (fpr_core/train.py), reported as ``train/<name>``."""
FINAL_LOSS = f"{TRAIN_PREFIX}/final_loss"
"""The last training loss, in a trial's final report."""
STEP = "step"
"""Training step of a report (Tune's and ASHA's time attribute)."""

CELL_KEY = "cell"
"""Tune config key: the trial's cell (``Cell.payload()``)."""
META_KEY = "meta"
"""Tune config key: the sweep's provenance (``SweepMeta.as_dict()``)."""
SEARCH_KEY = "search"
"""Tune config key: the values Optuna sampled (search sweeps only)."""

ROWS_KEY = "fpr/rows"
"""Final report: the trial's result rows (JSON list of row dicts)."""
CURVES_KEY = "fpr/curves"
"""Final report: mean residual per loop step, per split (JSON)."""
STATUS_KEY = "fpr/status"
"""Final report: the trial's status (ok, diverged, ...)."""
DATASETS_KEY = "fpr/datasets"
"""Final report: the splits the trial generated (fpr_core DatasetInfo + generator_version), JSON."""

SPLIT_METRIC_NAMES: dict[str, str] = {c.name: c.mlflow for c in COLUMNS if c.mlflow}
"""Row column -> metric prefix; logged to MLflow as ``<prefix>/<split>`` (e.g. ``acc/ood_64``);
from the ``mlflow`` of each column (sweep/columns.py)."""
SIZE_PREFIX = "by_size"
SIZE_SERIES: dict[str, str] = {c.name: f"{SIZE_PREFIX}/{c.name}" for c in COLUMNS if c.by_size}
"""Row column -> MLflow series logged with step = the split's size ('id' at the training size), so
MLflow's chart view draws each metric against size and overlays runs. MLflow labels every x axis
'Step' and offers no way to rename it, so the prefix (the charts' section title) says what the
step is."""
BUDGET_SERIES = "by_loop_budget/exact_acc"
"""Test-time compute curve: ``by_loop_budget/exact_acc/<split>`` with step = loop budget (rows'
``budget_iters``, ``budget_acc``): exact accuracy read out after each budget of loop steps, one series
per split."""
WEIGHTS_BYTES = "model/weights_bytes"
"""Size on disk of a trial's kept model (logged once it is kept)."""
FINAL_SPLIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.final)
"""Row columns a trial's final Tune report carries per split (``acc/id``, ``iters_mean/ood_64``),
so the Optuna search can optimise them."""
TRIAL_SUMMARY_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.summary)
"""Row columns logged once per trial to MLflow, under their column name."""

DEFAULT_SEARCH_METRIC = f"{SPLIT_METRIC_NAMES[FINAL_SPLIT_COLUMNS[0]]}/{split_name()}"
"""``acc/id``."""
DEFAULT_SCHEDULER_METRIC = f"{TRAIN_PREFIX}/loss"
PROGRESS_METRICS = (DEFAULT_SEARCH_METRIC, DEFAULT_SCHEDULER_METRIC)
"""The progress display shows the first of these a report carries."""


def train_metric(name: str) -> str:
    """``loss`` -> ``train/loss``."""
    return f"{TRAIN_PREFIX}/{name}"


def is_train_metric(key: str) -> bool:
    return key.startswith(f"{TRAIN_PREFIX}/")


def split_metric(column: str, split: str) -> str:
    """``('exact_acc', 'ood_64')`` -> ``acc/ood_64``."""
    return f"{SPLIT_METRIC_NAMES[column]}/{split}"


SWEEP_TRIALS = "trials"
"""Sweep (parent run) metrics ``trials/total`` and ``trials/<status>``: trial counts."""
BEST_OOD_ACC = "best_ood_acc"
"""Sweep metric ``best_ood_acc/<task>``: the best variant's mean exact accuracy at the largest size."""
BEST_VARIANT_TAG = "best_variant"
"""Sweep tag ``best_variant/<task>``: which variant that is."""


def sweep_count_metric(status: str) -> str:
    """``'ok'`` -> ``trials/ok`` (``'total'`` -> ``trials/total``)."""
    return f"{SWEEP_TRIALS}/{status}"


def best_ood_metric(task: str) -> str:
    return f"{BEST_OOD_ACC}/{task}"


def best_variant_tag(task: str) -> str:
    return f"{BEST_VARIANT_TAG}/{task}"


def protocol_split(split: str, halting: Optional[str]) -> str:
    """The split as metric keys name it: itself under the trial's own halting ('trained', or none
    recorded), ``<split>/<protocol>`` under another (``acc/ood_22/long``)."""
    return split if (halting or TRAINED) == TRAINED else f"{split}/{halting}"


def budget_metric(split: str) -> str:
    """``'ood_64'`` -> ``by_loop_budget/exact_acc/ood_64``."""
    return f"{BUDGET_SERIES}/{split}"


def train_report(metrics: dict[str, Any]) -> dict[str, Any]:
    """fpr_core's ``on_log`` metrics keyed as reported: ``{'loss': x}`` -> ``{'train/loss': x}``."""
    return {train_metric(k): v for k, v in metrics.items()}


def scheduler_metrics() -> list[str]:
    """What ASHA may watch: metrics reported during training."""
    return [train_metric(m) for m in TRAIN_METRICS]


def search_metrics(splits: Iterable[str]) -> list[str]:
    """What Optuna may optimise: the final per-split metrics of ``splits``, and the final loss."""
    per_split = [split_metric(c, s) for c in FINAL_SPLIT_COLUMNS for s in splits]
    return sorted(per_split) + [FINAL_LOSS]
