"""Load a sweep's results table and label its rows for the report (variants, regimes, trials).

The results table (``orchestrator/store/schema.py``) has one row per (trial, eval split). The report groups
trials into *variants*: the values of recall, outer_norm and the spectral regime, plus every other
``cfg.*`` column that takes more than one value within a task (an lr axis, a grad mode ...). Seeds
are not a variant axis: trials of one variant that differ only in seed are the seed spread.

Spectral regime (SGLT): target sigma < 1 contractive, ~1 critical, > 1 expansive, null = no
spectral normalisation ("unnormalised").
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.store import parquet

CRITICAL_TOL = 0.05
"""|sigma - 1| <= CRITICAL_TOL counts as the critical spectral regime."""

REGIME_ORDER = ("contractive", "critical", "expansive", "unnormalised")
RECALL_ORDER = ("none", "standard", "internal")
NORM_ORDER = ("none", "rms", "layer")

ALWAYS_AXES = ("cfg.model.recall", "cfg.model.outer_norm", "cfg.model.spectral")
"""Axes every variant label shows, varying or not: the three the stability claims are about."""

NON_AXES = frozenset({"cfg.train.seed", "cfg.train.device", "cfg.model.vocab_size",
                      "cfg.model.n_classes"})
"""cfg columns that never define a variant: the seed (that is the spread), the device, and the
vocabulary/class counts that are set from the task."""


def load_results(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's rows as they are now (``store.parquet.read_current``: results.parquet, or the
    newer per-trial files while a sweep runs), every schema column present."""
    return parquet.read_current(Path(sweep_dir)).to_pandas()


def parse_spectral(value) -> float:
    """cfg.model.spectral as stored (a string number, or null/'None') -> float, NaN for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    text = str(value).strip()
    if text.lower() in ("", "none", "null", "nan"):
        return math.nan
    return float(text)


def spectral_regime(sigma: float) -> str:
    """The SGLT spectral regime of a target sigma (NaN = unnormalised)."""
    if math.isnan(sigma):
        return "unnormalised"
    if abs(sigma - 1.0) <= CRITICAL_TOL:
        return "critical"
    return "contractive" if sigma < 1.0 else "expansive"


def split_sort_key(split: str, size) -> tuple:
    """'id' first, then OOD splits by size."""
    size_key = float(size) if size is not None and not pd.isna(size) else math.inf
    return (0 if split == "id" else 1, size_key, split)


def is_ood(split: pd.Series) -> pd.Series:
    return split.astype(str).str.startswith("ood")


def variant_axes(df: pd.DataFrame) -> list[str]:
    """The cfg columns that define variants: ALWAYS_AXES present in the table, then every other
    cfg column with more than one distinct value (nulls included) within some task."""
    cfg_cols = [c for c in df.columns if c.startswith("cfg.")]
    axes = [c for c in ALWAYS_AXES if c in cfg_cols and df[c].notna().any()]
    for col in cfg_cols:
        if col in axes or col in NON_AXES:
            continue
        per_task = df.groupby("task", dropna=False)[col].nunique(dropna=False)
        if (per_task > 1).any():
            axes.append(col)
    return axes


def _short_names(axes: list[str]) -> dict[str, str]:
    """'cfg.model.recall' -> 'recall', unless two sections share a field name (then 'train.batch_size')."""
    fields = [a.split(".")[-1] for a in axes]
    return {a: (f if fields.count(f) == 1 else ".".join(a.split(".")[1:])) for a, f in zip(axes, fields)}


def _axis_value(col: str, value) -> str:
    if col == "cfg.model.spectral":
        sigma = parse_spectral(value)
        return spectral_regime(sigma) if math.isnan(sigma) else f"{sigma:g} ({spectral_regime(sigma)})"
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _task_labels(df: pd.DataFrame) -> pd.Series:
    """The task name, plus its params where one task appears with several param sets (S5 vs A5),
    plus its training size where one task appears with several."""
    params = df["task_params"].fillna("{}").astype(str)
    train = df["train_size"].astype("Int64").astype(str)
    n_params = params.groupby(df["task"]).transform("nunique")
    n_train = train.groupby(df["task"]).transform("nunique")

    def label(task, p, t, np_, nt):
        extra = [_params_text(p)] if np_ > 1 else []
        extra += [f"train={t}"] if nt > 1 else []
        return f"{task}[{','.join(extra)}]" if extra else task

    return pd.Series([label(*x) for x in zip(df["task"], params, train, n_params, n_train)], index=df.index)


def _params_text(params_json: str) -> str:
    try:
        items = json.loads(params_json)
    except ValueError:
        return params_json
    return ",".join(f"{k}={v}" for k, v in sorted(items.items())) if isinstance(items, dict) else params_json


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of the results with report columns: task_label, recall, outer_norm, sigma, regime,
    variant_label (all variant axes), context_label (all axes but recall) and status_ok (True when
    every row of the row's trial has status ok)."""
    out = df.copy()
    out["task_label"] = _task_labels(out)
    out["recall"] = out["cfg.model.recall"].astype(object) if "cfg.model.recall" in out else None
    out["outer_norm"] = out["cfg.model.outer_norm"].astype(object) if "cfg.model.outer_norm" in out else None
    sigmas = out["cfg.model.spectral"].map(parse_spectral) if "cfg.model.spectral" in out else math.nan
    out["sigma"] = sigmas
    out["regime"] = pd.Series(out["sigma"], index=out.index).map(spectral_regime)
    axes = variant_axes(out)
    names = _short_names(axes)
    if axes:
        out["variant_label"] = [", ".join(f"{names[a]}={_axis_value(a, row[i])}" for i, a in enumerate(axes))
                                for row in out[axes].itertuples(index=False)]
        others = [a for a in axes if a != "cfg.model.recall"]
        out["context_label"] = [", ".join(f"{names[a]}={_axis_value(a, row[i])}" for i, a in enumerate(others))
                                for row in out[others].itertuples(index=False)] if others else ""
    else:  # no cfg columns filled in: fall back to the orchestrator's own label
        out["variant_label"] = out["variant"].fillna("all").astype(str)
        out["context_label"] = ""
    # a trial counts only if all of its rows are ok (a failed trial's leftover rows do not)
    out["status_ok"] = (out["status"] == "ok").groupby(out["trial_id"]).transform("all")
    return out


def variant_sort_key(label: str, frame: pd.DataFrame) -> tuple:
    """Order variants by recall, outer norm, sigma (as in the papers' tables), then label."""
    row = frame.loc[frame["variant_label"] == label].iloc[0]
    recall = RECALL_ORDER.index(row["recall"]) if row["recall"] in RECALL_ORDER else len(RECALL_ORDER)
    norm = NORM_ORDER.index(row["outer_norm"]) if row["outer_norm"] in NORM_ORDER else len(NORM_ORDER)
    sigma = row["sigma"] if not pd.isna(row["sigma"]) else math.inf
    return (recall, norm, sigma, label)


def ordered_variants(frame: pd.DataFrame) -> list[str]:
    labels = frame["variant_label"].dropna().unique().tolist()
    return sorted(labels, key=lambda label: variant_sort_key(label, frame))


FIXED_POINT_REACHED = 0.5
"""A split's input-dependence counts for claim 3 only if at least this fraction reached r < tol."""


def trial_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ok trial: its labels, seed, mean OOD and ID exact accuracy, and the stability
    axes averaged over all of its eval splits (ID and OOD) and mean iterations.

    Only rows with status 'ok' count; failed/diverged/stopped trials are listed by the header."""
    ok = frame[frame["status_ok"]].copy()
    ok["ood_acc"] = ok["exact_acc"].where(is_ood(ok["split"]))
    ok["id_acc"] = ok["exact_acc"].where(ok["split"] == "id")
    # Input-dependence is a property of a fixed point: count it only on splits where most instances
    # reached one (a state that never settles makes the ratio measure divergence, not dependence).
    ok["input_dependence_fp"] = ok["input_dependence"].where(ok["reachability"] >= FIXED_POINT_REACHED)
    keys = ["trial_id", "task", "task_label", "variant_label", "context_label", "recall", "outer_norm", "regime"]
    metrics = {"ood_acc": "mean", "id_acc": "mean", "reachability": "mean", "input_dependence": "mean",
               "input_dependence_fp": "mean",
               "spectral_radius": "mean", "iters_mean": "mean", "seed": "first", "sigma": "first"}
    ok = ok.astype({k: object for k in keys})
    return ok.groupby(keys, dropna=False, sort=False).agg(metrics).reset_index()


def seed_std(values: pd.Series) -> float:
    """Sample std across seeds (ddof=1); NaN with fewer than two seeds."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def finite_mean(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
