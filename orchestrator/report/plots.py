"""The report's figures, one set per task (matplotlib, Agg backend, PNG files written atomically).

- ``<task>_ood_accuracy.png``: exact accuracy vs split size per variant, log2 x-axis, mean ± seed
  std, the training size marked (the central figure of Deep Thinking / FPRM / SGLT).
- ``<task>_adaptive_compute.png``: iterations to converge vs instance difficulty (binned, pooled over
  a variant's ok rows), and mean iterations vs size (FPRM: compute should follow difficulty).
- ``<task>_stability.png``: each stability axis (reachability, input-dependence, spectral radius at
  z*) against OOD accuracy, one point per trial, so one sees whether stability predicts
  generalisation (SGLT).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.report.claims import instance_pairs  # noqa: E402
from orchestrator.report.frame import ordered_variants, seed_std, trial_summary  # noqa: E402
from orchestrator.sweep.layout import SweepDir  # noqa: E402

MAX_DIFFICULTY_BINS = 10
"""Difficulties with more distinct values than this are binned by quantiles."""

STABILITY_AXES = (("reachability", "reachability (r < tol within cap)"),
                  ("input_dependence", "input-dependence ||dz*|| / ||dx||"),
                  ("spectral_radius", "spectral radius of dF/dz at z*"))


def slug(text: str) -> str:
    """A file-name-safe form of a task label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _save(fig, path: Path) -> Path:
    """Write the figure under a hidden temp name, then replace: readers never see half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _colors(variants: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


def _legend(fig, axes) -> None:
    handles, labels = [], []
    for ax in np.atleast_1d(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7,
                   ncol=min(3, len(labels)), frameon=False)


def _set_log2(ax, sizes) -> None:
    sizes = sorted({int(s) for s in sizes if s and s > 0})
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes], fontsize=7)
        ax.minorticks_off()


def plot_ood_accuracy(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Exact accuracy vs size per variant (mean ± seed std over ok trials)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    variants = ordered_variants(rows)
    colors = _colors(variants)
    for variant in variants:
        sub = rows[rows["variant_label"] == variant].dropna(subset=["size", "exact_acc"])
        if sub.empty:
            continue
        stats = sub.groupby("size")["exact_acc"].agg(mean="mean", std=seed_std).reset_index()
        ax.errorbar(stats["size"], stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", ms=3,
                    capsize=2, color=colors[variant], label=variant)
    for train_size in rows["train_size"].dropna().unique():
        ax.axvline(train_size, color="grey", ls=":", lw=1)
    _set_log2(ax, rows["size"].dropna())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("size (log2; dotted = training size)")
    ax.set_ylabel("exact accuracy")
    ax.set_title(f"{task}: accuracy vs size")
    _legend(fig, ax)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_ood_accuracy"))


def _difficulty_bins(values: np.ndarray) -> np.ndarray | None:
    """Bin edges for difficulty: None = use the distinct values themselves."""
    if np.unique(values).size <= MAX_DIFFICULTY_BINS:
        return None
    return np.unique(np.quantile(values, np.linspace(0, 1, MAX_DIFFICULTY_BINS + 1)))


def _binned_iters(diff: np.ndarray, iters: np.ndarray, edges: np.ndarray | None):
    """(x, mean iterations) per difficulty value or per bin (x = mean difficulty in the bin)."""
    if edges is None:
        xs = np.unique(diff)
        return xs, np.array([iters[diff == x].mean() for x in xs])
    idx = np.clip(np.searchsorted(edges, diff, side="right") - 1, 0, len(edges) - 2)
    xs, ys = [], []
    for b in np.unique(idx):
        xs.append(diff[idx == b].mean())
        ys.append(iters[idx == b].mean())
    return np.array(xs), np.array(ys)


def plot_adaptive_compute(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Left: iterations vs instance difficulty (binned). Right: mean iterations vs size."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0))
    variants = ordered_variants(rows)
    colors = _colors(variants)
    pooled = {v: instance_pairs(rows[rows["variant_label"] == v]) for v in variants}
    all_diff = np.concatenate([d for d, _ in pooled.values()]) if pooled else np.empty(0)
    edges = _difficulty_bins(all_diff) if all_diff.size else None
    for variant in variants:
        diff, iters = pooled[variant]
        if diff.size:
            xs, ys = _binned_iters(diff, iters, edges)
            left.plot(xs, ys, marker="o", ms=3, color=colors[variant], label=variant)
        sub = rows[rows["variant_label"] == variant].dropna(subset=["size", "iters_mean"])
        if not sub.empty:
            stats = sub.groupby("size")["iters_mean"].agg(mean="mean", std=seed_std).reset_index()
            right.errorbar(stats["size"], stats["mean"], yerr=stats["std"].fillna(0.0), marker="o",
                           ms=3, capsize=2, color=colors[variant], label=variant)
    key = rows["difficulty_key"].dropna()
    left.set_xlabel(f"instance difficulty ({key.iloc[0] if len(key) else 'difficulty'})")
    left.set_ylabel("iterations to converge")
    left.set_title(f"{task}: iterations vs difficulty" + ("" if all_diff.size else " (no per-instance data)"))
    _set_log2(right, rows["size"].dropna())
    right.set_xlabel("size (log2)")
    right.set_ylabel("mean iterations")
    right.set_title(f"{task}: mean iterations vs size")
    _legend(fig, (left, right))
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_adaptive_compute"))


def plot_stability(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Each stability axis vs OOD accuracy, one point per ok trial, coloured by variant."""
    trials = trial_summary(rows)
    fig, axes = plt.subplots(1, len(STABILITY_AXES), figsize=(13, 3.8), sharey=True)
    variants = ordered_variants(rows)
    colors = _colors(variants)
    for ax, (metric, label) in zip(axes, STABILITY_AXES):
        for variant in variants:
            sub = trials[trials["variant_label"] == variant].dropna(subset=[metric, "ood_acc"])
            if not sub.empty:
                ax.scatter(sub[metric], sub["ood_acc"], s=18, color=colors[variant], label=variant)
        values = trials[metric].dropna()
        if metric == "input_dependence" and len(values) and (values > 0).all() and values.max() > 100 * values.min():
            ax.set_xscale("log")
        if metric == "spectral_radius":
            ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel(label + ("" if len(values) else " (not measured)"))
    axes[0].set_ylabel("OOD exact accuracy (mean over OOD splits)")
    axes[0].set_ylim(-0.03, 1.03)
    fig.suptitle(f"{task}: stability axes vs OOD accuracy (one point per trial)")
    _legend(fig, axes)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_stability"))


def plot_task(frame: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """All figures for one task, from its ok rows; returns the written paths."""
    rows = frame[(frame["task_label"] == task) & frame["status_ok"]]
    if rows.empty:
        return []
    return [plot_ood_accuracy(rows, task, out_dir), plot_adaptive_compute(rows, task, out_dir),
            plot_stability(rows, task, out_dir)]
