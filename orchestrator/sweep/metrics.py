"""Every metric and result key name of a sweep, in one place: what a trial reports to Tune, what
the driver logs to MLflow, and which of them a spec may name (``scheduler.metric``,
``search.metric``). A renamed metric changes one line here.

Names are ``<prefix>/<split-or-name>``: ``train/loss`` during training, ``acc/ood_64`` at the end.
"""
from __future__ import annotations

from typing import Any, Iterable

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

SPLIT_METRIC_NAMES = {"exact_acc": "acc", "token_acc": "token_acc", "iters_mean": "iters_mean",
                      "iters_p50": "iters_p50", "iters_p95": "iters_p95", "reachability": "reachability",
                      "cycled_frac": "cycled_frac", "residual_median": "residual_median",
                      "input_dependence": "input_dependence", "fixed_point_spread": "fixed_point_spread",
                      "path_independence": "path_independence", "spectral_radius": "spectral_radius",
                      "input_derivative": "input_derivative", "basin_jump_1e-4": "basin_jump_1e-4",
                      "basin_jump_1e-3": "basin_jump_1e-3", "basin_jump_1e-2": "basin_jump_1e-2",
                      "probe_verified": "probe_verified"}
"""Row column -> metric prefix; logged to MLflow as ``<prefix>/<split>`` (e.g. ``acc/ood_64``)."""
SIZE_SERIES = {"exact_acc": "by_size/exact_acc", "token_acc": "by_size/token_acc", "iters_mean": "by_size/iters_mean",
               "iters_p95": "by_size/iters_p95", "reachability": "by_size/reachability"}
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
FINAL_SPLIT_COLUMNS = ("exact_acc", "iters_mean")
"""Row columns a trial's final Tune report carries per split (``acc/id``, ``iters_mean/ood_64``),
so the Optuna search can optimise them."""
TRIAL_SUMMARY_COLUMNS = ("train_seconds", "train_steps", "final_loss")
"""Row columns logged once per trial to MLflow, under their column name."""

SPLIT_ROW_COLUMNS = ("n", "exact_acc", "token_acc", "iters_mean", "iters_p50", "iters_p95", "eval_cap",
                     "reachability", "cycled_frac", "residual_median", "input_dependence",
                     "fixed_point_spread", "path_independence", "spectral_radius", "input_derivative",
                     "basin_jump_1e-4", "basin_jump_1e-3", "basin_jump_1e-2", "probe_n", "probe_verified",
                     "eval_seconds")
"""Per-split metrics copied from fpr_core's evaluation into the result row (schema columns)."""
INT_ROW_COLUMNS = ("n", "eval_cap", "probe_n")
"""Of SPLIT_ROW_COLUMNS, the integer ones."""

DEFAULT_SEARCH_METRIC = "acc/id"
DEFAULT_SCHEDULER_METRIC = "train/loss"
PROGRESS_METRICS = ("acc/id", "train/loss")
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
