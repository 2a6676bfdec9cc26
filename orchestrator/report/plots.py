"""The report's figures, one set per task (matplotlib, Agg backend, PNG files written atomically).

Drawn to be printed: small multiples (one panel per recall placement, the axis the claims are
about) so no variant hides under another; within a panel every other variant has its own colour,
marker and line style from the Okabe-Ito palette (colour-blind safe); intervals are bands, and a
point resting on fewer than three learned seeds gets none; fonts stay legible with the figure at half page width.

- ``<task>_ood_accuracy.png``: exact accuracy vs size over learned trials, 95% t-interval band on
  seed means (none below 3 learned seeds), training size marked; legends give each variant's
  learned k/n.
- ``<task>_halting.png``: per recall panel, iterations of *converged* instances vs size (median),
  the loop cap drawn, and the share of instances that hit the cap; and iterations vs the task's
  difficulty key on converged instances (FPRM: compute should follow difficulty).
- ``<task>_stability.png``: reachability, input-dependence and rho(dF/dz) at z* against OOD accuracy,
  one point per trial, learned trials filled, the others hollow.
- ``<task>_compute_curve.png`` (tables with the test-time compute curve): exact accuracy vs loop
  budget per split, over learned trials (Deep Thinking's accuracy per test-time iteration).
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

from orchestrator.report import bootstrap  # noqa: E402
from orchestrator.report.claims import converged_pairs, learned_text, split_accuracy  # noqa: E402
from orchestrator.report.frame import (CAPPED, RECALL_ORDER, is_ood, ordered_variants, outcome_shares,  # noqa: E402
                                       trial_summary)
from orchestrator.sweep.layout import SweepDir  # noqa: E402

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Okabe & Ito (2008) palette, safe under the common colour-vision deficiencies."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
PANEL = (2.5, 2.2)
"""Inches per panel: at half page width a three-panel row prints at about 60% scale."""
FONT = 8
DODGE = 0.04
"""Horizontal offset between variants on log2 size axes (in octaves), so equal values do not hide."""
MAX_DIFFICULTY_BINS = 8
"""Difficulties with more distinct values than this are binned by quantiles."""
STABILITY_AXES = (("reachability", "reachability"),
                  ("input_derivative", "||dz*/dx v|| at z*"),
                  ("spectral_radius", "rho(dF/dz) at z*"))

plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT,
                     "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1})


def slug(text: str) -> str:
    """A file-name-safe form of a task label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _save(fig, path: Path) -> Path:
    """Write the figure under a hidden temp name, then replace: readers never see half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=200, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def styles(labels: list[str]) -> dict[str, dict]:
    """Colour, marker and line style per label: colours first, then markers and dashes cycle on."""
    return {label: {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[(i // 2) % len(MARKERS)],
                    "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}
            for i, label in enumerate(labels)}


def _panels(rows: pd.DataFrame) -> list[str]:
    """Recall placements present, in the papers' order (one panel each)."""
    present = [r for r in rows["recall"].dropna().unique()]
    return sorted(present, key=lambda r: RECALL_ORDER.index(r) if r in RECALL_ORDER else len(RECALL_ORDER))


def _contexts(rows: pd.DataFrame) -> list[str]:
    """Context labels (every axis but recall) in variant order, one style each across panels."""
    order = ordered_variants(rows)
    labels = {v: c for v, c in zip(rows["variant_label"], rows["context_label"])}
    return list(dict.fromkeys(labels[v] or "all" for v in order))


def _subplots(n: int, rows: int = 1, sharey: bool = True):
    fig, axes = plt.subplots(rows, n, figsize=(PANEL[0] * n, PANEL[1] * rows), sharey=sharey, squeeze=False)
    return fig, axes


def _legend(fig, axes, title: str = "") -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                   ncol=min(3, len(labels)), title=title or None)


def _set_log2(ax, sizes) -> None:
    sizes = sorted({int(s) for s in sizes if s and s > 0})
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()


def _line(ax, xs, ys, style: dict, label: str, low=None, high=None, n_seeds=None) -> None:
    """A line with markers and, where three or more seeds stand behind a point, its band."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ax.plot(xs, ys, label=label, ms=4, lw=1.2, **style)
    if low is not None:
        low, high = np.asarray(low, float), np.asarray(high, float)
        banded = np.asarray(n_seeds) >= 3 if n_seeds is not None else np.ones(xs.size, bool)
        banded &= np.isfinite(low) & np.isfinite(high)
        if banded.any():
            ax.fill_between(xs[banded], low[banded], high[banded], color=style["color"], alpha=0.18, lw=0)


def plot_ood_accuracy(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Exact accuracy vs size over learned trials, one panel per recall placement."""
    panels, contexts = _panels(rows), _contexts(rows)
    style = styles(contexts)
    fig, axes = _subplots(len(panels))
    rng = bootstrap.make_rng()
    for ax, recall in zip(axes[0], panels):
        for j, context in enumerate(contexts):
            sub = rows[(rows["recall"] == recall) & (rows["context_label"].fillna("all").replace("", "all") == context)]
            if sub.empty:
                continue
            dodge = 2.0 ** (DODGE * (j - (len(contexts) - 1) / 2))  # equal values stay visible side by side
            label = f"{context} ({learned_text(sub)})" if len(panels) == 1 else context
            points = []
            for size, cell in sub.groupby("size"):
                est = split_accuracy(cell, rng)
                points.append((size * dodge, est.effect, est.low, est.high, int(cell["learned"].sum())))
            points = [p for p in points if p[4] > 0]
            if points:
                xs, ys, lo, hi, ns = zip(*points)
                _line(ax, xs, ys, style[context], label, lo, hi, ns)
            else:
                ax.plot([], [], label=f"{label}: none learned", **style[context], mfc="none")
        for train_size in rows["train_size"].dropna().unique():
            ax.axvline(train_size, color="grey", ls=":", lw=1)
        _set_log2(ax, rows["size"].dropna())
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"recall={recall} ({learned_text(rows[rows['recall'] == recall])})")
        ax.set_xlabel("size (dotted: training)")
    axes[0][0].set_ylabel("exact accuracy, learned trials")
    fig.suptitle(f"{task}: accuracy vs size (band: 95% t-interval on seed means, >= 3 seeds)", fontsize=FONT + 1)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_ood_accuracy"))


def _difficulty_bins(values: np.ndarray) -> np.ndarray | None:
    if np.unique(values).size <= MAX_DIFFICULTY_BINS:
        return None
    return np.unique(np.quantile(values, np.linspace(0, 1, MAX_DIFFICULTY_BINS + 1)))


def _binned_median(diff: np.ndarray, iters: np.ndarray, edges: np.ndarray | None):
    """(x, median iterations) per difficulty value or per quantile bin (x = mean difficulty)."""
    if edges is None:
        xs = np.unique(diff)
        return xs, np.array([np.median(iters[diff == x]) for x in xs])
    idx = np.clip(np.searchsorted(edges, diff, side="right") - 1, 0, len(edges) - 2)
    bins = np.unique(idx)
    return (np.array([diff[idx == b].mean() for b in bins]), np.array([np.median(iters[idx == b]) for b in bins]))


def plot_halting(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Rows of panels per recall placement: converged iterations vs size with the cap drawn; share
    of instances at the cap vs size; converged iterations vs difficulty. Every ok trial."""
    panels, contexts = _panels(rows), _contexts(rows)
    style = styles(contexts)
    fig, axes = _subplots(len(panels), rows=3, sharey=False)
    key = rows["difficulty_key"].dropna()
    key = key.iloc[0] if len(key) else "difficulty"
    caps = rows.dropna(subset=["size", "eval_cap"]).groupby("size")["eval_cap"].max()
    for col, recall in enumerate(panels):
        top, mid, bottom = axes[0][col], axes[1][col], axes[2][col]
        for context in contexts:
            sub = rows[(rows["recall"] == recall) & (rows["context_label"].fillna("all").replace("", "all") == context)]
            if sub.empty:
                continue
            sizes, medians, capped = [], [], []
            for size, cell in sub.groupby("size"):
                _, iters = converged_pairs(cell)
                sizes.append(size)
                medians.append(np.median(iters) if iters.size else np.nan)
                capped.append(outcome_shares(cell)[CAPPED])
            _line(top, sizes, medians, style[context], context)
            _line(mid, sizes, capped, style[context], context)
            diff, iters = converged_pairs(sub)
            if diff.size:
                xs, ys = _binned_median(diff, iters, _difficulty_bins(diff))
                _line(bottom, xs, ys, style[context], context)
        if len(caps):
            top.plot(caps.index, caps.values, color="grey", ls="--", lw=1, label="loop cap")
        for ax in (top, mid):
            _set_log2(ax, rows["size"].dropna())
        top.set_title(f"recall={recall}")
        top.set_xlabel("size")
        mid.set_xlabel("size")
        mid.set_ylim(-0.03, 1.03)
        bottom.set_xlabel(f"{key} (converged instances)")
    axes[0][0].set_ylabel("median iterations,\nconverged instances")
    axes[1][0].set_ylabel("share at the cap")
    axes[2][0].set_ylabel("median iterations")
    fig.suptitle(f"{task}: halting (converged apart from capped; dashed: loop cap)", fontsize=FONT + 1)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_halting"))


def plot_stability(rows: pd.DataFrame, task: str, out_dir: Path) -> Path:
    """Each stability axis vs OOD accuracy, one point per ok trial; learned filled, others hollow."""
    trials = trial_summary(rows)
    axes_used = list(STABILITY_AXES)
    if trials["input_derivative"].isna().all():  # a schema-1 table: its finite-difference probe
        axes_used[1] = ("input_dependence", "finite difference at 1e-2||x|| (schema 1)")
        axes_used[2] = ("spectral_radius", "rho(dF/dz) at the probe's rest state (schema 1)")
    variants = ordered_variants(rows)
    style = styles(variants)
    fig, axes = _subplots(len(axes_used))
    for ax, (metric, label) in zip(axes[0], axes_used):
        values = trials[metric].dropna()
        positive = values[values > 0]
        logged = metric.startswith("input") and len(positive) and positive.max() > 100 * positive.min()
        floor = float(np.log10(positive.min())) - 1 if logged else 0.0
        for variant in variants:
            sub = trials[trials["variant_label"] == variant].dropna(subset=[metric, "ood_acc"])
            for learned, part in sub.groupby("learned"):
                st = style[variant]
                xs = part[metric].to_numpy(float)
                if logged:  # decades span the axis; an exact 0 (no recall) sits one decade left
                    xs = np.where(xs > 0, np.log10(np.where(xs > 0, xs, 1.0)), floor)
                ax.scatter(xs, part["ood_acc"], s=22, marker=st["marker"], edgecolors=st["color"],
                           facecolors=st["color"] if learned else "none", linewidths=1,
                           label=variant if learned or sub["learned"].sum() == 0 else None)
        if metric == "spectral_radius":
            ax.axvline(1.0, color="grey", ls=":", lw=1)
        name = f"log10 {label}" + (f" (0 at {floor:.0f})" if logged and (values == 0).any() else "") if logged else label
        ax.set_xlabel(name + ("" if len(values) else " (not measured)"))
    axes[0][0].set_ylabel("OOD exact accuracy")
    axes[0][0].set_ylim(-0.03, 1.03)
    fig.suptitle(f"{task}: stability vs OOD accuracy (filled: learned; hollow: not learned)", fontsize=FONT + 1)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_stability"))


def plot_compute_curve(rows: pd.DataFrame, task: str, out_dir: Path) -> Path | None:
    """Exact accuracy vs loop budget per split (panels), mean over learned trials per variant;
    None when the table holds no curve (schema 1)."""
    curves = rows[rows["learned"] & rows["budget_iters"].notna()]
    curves = curves[[b is not None and len(b) > 0 for b in curves["budget_iters"]]]
    if curves.empty:
        return None
    splits = sorted(curves["split"].unique(), key=lambda s: (is_ood(pd.Series([s]))[0], curves.loc[curves["split"] == s, "size"].max()))
    variants = ordered_variants(curves)
    style = styles(variants)
    fig, axes = _subplots(len(splits))
    for ax, split in zip(axes[0], splits):
        for variant in variants:
            sub = curves[(curves["split"] == split) & (curves["variant_label"] == variant)]
            if sub.empty:
                continue
            budgets = np.asarray(sub["budget_iters"].iloc[0], float)
            accs = np.stack([np.asarray(a, float) for a in sub["budget_acc"] if len(a) == budgets.size])
            _line(ax, budgets, accs.mean(0), style[variant], variant)
        cap = curves.loc[curves["split"] == split, "eval_cap"].max()
        ax.axvline(cap, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(split)
        ax.set_xlabel("loop budget (dashed: cap)")
    axes[0][0].set_ylabel("exact accuracy, learned trials")
    fig.suptitle(f"{task}: test-time compute (accuracy read out at each budget)", fontsize=FONT + 1)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, SweepDir(out_dir).figure(f"{slug(task)}_compute_curve"))


def plot_task(frame: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """All figures for one task, from its ok rows; returns the written paths."""
    rows = frame[(frame["task_label"] == task) & frame["status_ok"]]
    if rows.empty:
        return []
    paths = [plot_ood_accuracy(rows, task, out_dir), plot_halting(rows, task, out_dir),
             plot_stability(rows, task, out_dir), plot_compute_curve(rows, task, out_dir)]
    return [p for p in paths if p is not None]
