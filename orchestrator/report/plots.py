"""The report's figures, one set per task (matplotlib, Agg backend; each as PNG and PDF, written
atomically).

Drawn to be printed at half a page's width: every figure is FIG_WIDTH inches wide with FONT-point
text at that size, panels wrap onto rows of at most MAX_COLS, and a legend takes as many columns as
fit the figure's width. Small multiples so no variant hides under another: a panel holds at most
three lines (one panel per recall placement, or, when more than three other variants would share
one, one panel per context with a line per recall placement). Lines have their own colour, marker and
line style from the Okabe-Ito palette (colour-blind safe); intervals are bands, and a point resting
on fewer than three learned seeds gets none.

- ``<task>_ood_accuracy.png``: exact accuracy vs size; every trial is a point (filled: learned;
  a cross: not learned, i.e. undertrained by the competence gate), the line the mean over learned
  trials with its 95% t-interval band on seed means (none below 3 learned seeds), training size
  marked; legends give each line's learned k/n.
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
from orchestrator.report.claims import converged_pairs, n_learned, n_trials, split_accuracy  # noqa: E402
from orchestrator.report.frame import (CAPPED, RECALL_ORDER, is_ood, ordered_variants, outcome_shares,  # noqa: E402
                                       trial_summary)
from orchestrator.sweep.layout import SweepDir  # noqa: E402

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Okabe & Ito (2008) palette, safe under the common colour-vision deficiencies."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
FIG_WIDTH = 3.5
"""Inches: half of a 7-inch text width, the size the figures are drawn (and read) at."""
PANEL_HEIGHT = 1.4
"""Inches per row of panels."""
MAX_COLS = 2
"""Panels per row; more wrap onto further rows."""
MAX_LINES = 3
"""Lines one panel holds at most (more would hide each other where they agree)."""
FONT = 7
DODGE = 0.04
"""Horizontal offset between variants on log2 size axes (in octaves), so equal values do not hide."""
MAX_DIFFICULTY_BINS = 8
"""Difficulties with more distinct values than this are binned by quantiles."""
STABILITY_AXES = (("reachability", "reachability"),
                  ("input_derivative", "||dz*/dx v|| at z*"),
                  ("spectral_radius", "rho(dF/dz) at z*"))

plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT,
                     "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1,
                     "pdf.fonttype": 42})  # TrueType in the PDF: text stays text for journals


def slug(text: str) -> str:
    """A file-name-safe form of a task label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _save(fig, path: Path) -> Path:
    """Write the figure as PNG (``path``) and PDF beside it, each under a hidden temp name, then
    replace: readers never see half a file. Returns the PNG's path."""
    for target, kind in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        tmp = target.with_name(f".{target.name}.tmp")
        fig.savefig(tmp, dpi=300, bbox_inches="tight", format=kind)
        os.replace(tmp, target)
    plt.close(fig)
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
    """``n`` panels wrapped onto rows of MAX_COLS (``rows`` > 1: a fixed grid of rows x n), FIG_WIDTH
    wide; unused cells of the last row are hidden. Returns (fig, 2-D array of axes)."""
    if rows > 1:
        cols = n
    else:
        cols = min(n, MAX_COLS)
        rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(FIG_WIDTH, PANEL_HEIGHT * rows), sharey=sharey, squeeze=False)
    if cols < n or rows * cols > n and cols == min(n, MAX_COLS):
        for ax in np.ravel(axes)[n:]:
            ax.set_visible(False)
    return fig, axes


def _panel_axes(axes, n: int) -> list:
    """The first ``n`` panels of a wrapped grid, row by row."""
    return list(np.ravel(axes))[:n]


def _label_rows(axes, ylabel: str) -> None:
    """The y label on the first panel of every row."""
    for row in axes:
        row[0].set_ylabel(ylabel)


def _legend(fig, axes, title: str = ""):
    """One legend under the panels, in as many columns (at most 3) as fit the figure's width."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    renderer = fig.canvas.get_renderer()
    width = fig.get_window_extent(renderer).width
    for ncol in range(min(3, len(labels)), 0, -1):
        legend = fig.legend(handles, [_wrap(lab) for lab in labels], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                            frameon=False, ncol=ncol, title=title or None, handlelength=1.8, columnspacing=1.0)
        if ncol == 1 or legend.get_window_extent(renderer).width <= width:
            return legend
        legend.remove()
    return None


LABEL_CHARS = 48
"""Legend labels wrap at this many characters (a one-column legend then fits FIG_WIDTH)."""


def _wrap(label: str, chars: int = LABEL_CHARS) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, chars, break_on_hyphens=False)) or label


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
    ax.plot(xs, ys, label=label, ms=3, lw=1.0, **style)
    if low is not None:
        low, high = np.asarray(low, float), np.asarray(high, float)
        banded = np.asarray(n_seeds) >= 3 if n_seeds is not None else np.ones(xs.size, bool)
        banded &= np.isfinite(low) & np.isfinite(high)
        if banded.any():
            ax.fill_between(xs[banded], low[banded], high[banded], color=style["color"], alpha=0.18, lw=0)


def _context(rows: pd.DataFrame) -> pd.Series:
    return rows["context_label"].fillna("all").replace("", "all")


def _shared_parts(labels: list[str]) -> list[str]:
    """'axis=value' parts every label holds (said once in the title, not in every label)."""
    parts = [set(label.split(", ")) for label in labels if label and label != "all"]
    return sorted(set.intersection(*parts)) if len(parts) > 1 else []


def _drop(label: str, shared: list[str]) -> str:
    return ", ".join(p for p in label.split(", ") if p not in shared) or "all"


def accuracy_panels(rows: pd.DataFrame) -> tuple[str, list[tuple[str, pd.DataFrame]]]:
    """(what a line is, [(panel title, its rows)]): one panel per recall placement with a line per
    context while at most MAX_LINES contexts share one; else one panel per context with a line per
    recall placement (small multiples, so variants that agree do not hide each other)."""
    recalls, contexts = _panels(rows), _contexts(rows)
    if len(contexts) <= MAX_LINES or len(recalls) > MAX_LINES:
        return "context", [(f"recall={r}", rows[rows["recall"] == r]) for r in recalls]
    return "recall", [(c, rows[_context(rows) == c]) for c in contexts]


def plot_ood_accuracy(rows: pd.DataFrame, task: str, layout: SweepDir) -> Path:
    """Exact accuracy vs size: every trial a point (learned filled, not learned a cross), a line per
    variant through the mean of its learned trials, with a band from >= 3 learned seeds."""
    line_by, panels = accuracy_panels(rows)
    shared = _shared_parts(_contexts(rows))
    keys = _panels(rows) if line_by == "recall" else _contexts(rows)
    style = styles(keys)
    fig, axes = _subplots(len(panels))
    rng = bootstrap.make_rng()
    for ax, (title, panel) in zip(_panel_axes(axes, len(panels)), panels):
        for j, key in enumerate(keys):
            sub = panel[(panel["recall"] if line_by == "recall" else _context(panel)) == key]
            if sub.empty:
                continue
            name = f"recall={key}" if line_by == "recall" else _drop(key, shared)
            _accuracy_line(ax, sub, style[key], name, 2.0 ** (DODGE * (j - (len(keys) - 1) / 2)), rng)
            ax.text(0.05, 0.62 - 0.12 * j, f"{n_learned(sub)}/{n_trials(sub)}", color=style[key]["color"],
                    transform=ax.transAxes, ha="left", va="center", fontsize=FONT - 1)
        for train_size in rows["train_size"].dropna().unique():
            ax.axvline(train_size, color="grey", ls=":", lw=0.8)
        _set_log2(ax, rows["size"].dropna())
        ax.set_ylim(-0.04, 1.04)
        ax.set_yticks([0, 0.5, 1])
        ax.set_title(_wrap(title if line_by == "context" else _drop(title, shared), 26), fontsize=FONT - 0.5)
    for ax in np.ravel(axes)[-min(len(panels), MAX_COLS):]:
        ax.set_xlabel("size (dotted: training)")
    _label_rows(axes, "exact accuracy")
    ax0 = _panel_axes(axes, 1)[0]
    ax0.scatter([], [], s=9, color="grey", label="a learned trial")
    ax0.scatter([], [], s=12, marker="x", color="grey", linewidths=0.8, label="a trial not learned (undertrained)")
    ax0.plot([], [], ls="none", label="k/n: trials learned of n")
    note = f" ({', '.join(shared)})" if shared else ""
    fig.suptitle(_wrap(f"{task}{note}: accuracy vs size; line: mean of learned trials, band: 95% t-interval "
                       "(>= 3 learned seeds)", 70), fontsize=FONT)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, layout.figure(f"{slug(task)}_ood_accuracy"))


def _accuracy_line(ax, sub: pd.DataFrame, style: dict, label: str, dodge: float, rng) -> None:
    """One variant (or recall placement) in a panel: its trials as points, its learned mean as a line."""
    per_trial = sub.groupby(["trial_id", "size"]).agg(acc=("exact_acc", "mean"), learned=("learned", "first")).reset_index()
    for learned, part in per_trial.groupby("learned"):
        xs = part["size"].to_numpy(float) * dodge
        if learned:
            ax.scatter(xs, part["acc"], s=9, color=style["color"], alpha=0.45, linewidths=0, zorder=1)
        else:
            ax.scatter(xs, part["acc"], s=12, marker="x", color=style["color"], alpha=0.8, linewidths=0.8, zorder=1)
    points = []
    for size, cell in sub.groupby("size"):
        if cell["learned"].any():
            est = split_accuracy(cell, rng)
            points.append((size * dodge, est.effect, est.low, est.high, int(cell.loc[cell["learned"], "seed"].nunique())))
    if points:
        xs, ys, lo, hi, ns = zip(*points)
        _line(ax, xs, ys, style, label, lo, hi, ns)
    else:  # nothing learned: the crosses carry the variant, the legend says so
        ax.plot([], [], label=label, mfc="none", **style)


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


def plot_halting(rows: pd.DataFrame, task: str, layout: SweepDir) -> Path:
    """Rows of panels per recall placement: converged iterations vs size with the cap drawn; share
    of instances at the cap vs size; converged iterations vs difficulty. Every ok trial."""
    panels, contexts = _panels(rows), _contexts(rows)
    style = styles(contexts)
    shared = _shared_parts(contexts)
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
            label = _drop(context, shared)
            _line(top, sizes, medians, style[context], label)
            _line(mid, sizes, capped, style[context], label)
            diff, iters = converged_pairs(sub)
            if diff.size:
                xs, ys = _binned_median(diff, iters, _difficulty_bins(diff))
                _line(bottom, xs, ys, style[context], label)
        if len(caps):
            top.plot(caps.index, caps.values, color="grey", ls="--", lw=1, label="loop cap")
        for ax in (top, mid):
            _set_log2(ax, rows["size"].dropna())
        top.set_title(f"recall={recall}")
        top.set_xlabel("size")
        mid.set_xlabel("size")
        mid.set_ylim(-0.03, 1.03)
        bottom.set_xlabel(key)
    axes[0][0].set_ylabel("median iterations,\nconverged instances")
    axes[1][0].set_ylabel("share at the cap")
    axes[2][0].set_ylabel(f"median iterations,\nconverged, by {key}")
    note = f" ({', '.join(shared)})" if shared else ""
    fig.suptitle(_wrap(f"{task}{note}: halting (converged apart from capped; dashed: loop cap)", 70), fontsize=FONT)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, layout.figure(f"{slug(task)}_halting"))


def plot_stability(rows: pd.DataFrame, task: str, layout: SweepDir) -> Path:
    """Each stability axis vs OOD accuracy, one point per ok trial; learned filled, others hollow."""
    trials = trial_summary(rows)
    axes_used = list(STABILITY_AXES)
    if trials["input_derivative"].isna().all():  # a schema-1 table: its finite-difference probe
        axes_used[1] = ("input_dependence", "finite difference at 1e-2||x|| (schema 1)")
        axes_used[2] = ("spectral_radius", "rho(dF/dz) at the probe's rest state (schema 1)")
    recalls, contexts = _panels(rows), _contexts(rows)
    colour = {r: OKABE_ITO[i % len(OKABE_ITO)] for i, r in enumerate(recalls)}  # colour: recall placement
    marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(contexts)}     # marker: the other axes
    shared = _shared_parts(contexts)
    trials = trials.assign(context=_context(trials))
    fig, axes = _subplots(len(axes_used))
    for ax, (metric, label) in zip(_panel_axes(axes, len(axes_used)), axes_used):
        values = trials[metric].dropna()
        positive = values[values > 0]
        logged = metric.startswith("input") and len(positive) and positive.max() > 100 * positive.min()
        floor = float(np.log10(positive.min())) - 1 if logged else 0.0
        shown = trials.dropna(subset=[metric, "ood_acc"])
        for (recall, context, learned), part in shown.groupby(["recall", "context", "learned"]):
            xs = part[metric].to_numpy(float)
            if logged:  # decades span the axis; an exact 0 (no recall) sits one decade left
                xs = np.where(xs > 0, np.log10(np.where(xs > 0, xs, 1.0)), floor)
            ax.scatter(xs, part["ood_acc"], s=14, marker=marker[context], edgecolors=colour[recall],
                       facecolors=colour[recall] if learned else "none", linewidths=0.8, alpha=0.85)
        if metric == "spectral_radius":
            ax.axvline(1.0, color="grey", ls=":", lw=1)
        name = f"log10 {label}" + (f" (0 at {floor:.0f})" if logged and (values == 0).any() else "") if logged else label
        ax.set_xlabel(_wrap(name + ("" if len(values) else " (not measured)"), 30))
    _label_rows(axes, "OOD exact accuracy")
    axes[0][0].set_ylim(-0.04, 1.04)
    ax0 = axes[0][0]
    for recall in recalls:
        ax0.plot([], [], ls="none", marker="o", ms=4, color=colour[recall], label=f"recall={recall}")
    for context in contexts if len(contexts) > 1 else []:
        ax0.plot([], [], ls="none", marker=marker[context], ms=4, color="grey", label=_drop(context, shared))
    note = f" ({', '.join(shared)})" if shared else ""
    fig.suptitle(_wrap(f"{task}{note}: stability vs OOD accuracy, one point per trial (filled: learned; "
                       "hollow: not learned)", 70), fontsize=FONT)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, layout.figure(f"{slug(task)}_stability"))


def plot_compute_curve(rows: pd.DataFrame, task: str, layout: SweepDir) -> Path | None:
    """Exact accuracy vs loop budget per split (panels), mean over learned trials per variant;
    None when the table holds no curve (schema 1)."""
    curves = rows[rows["learned"] & rows["budget_iters"].notna()]
    curves = curves[[b is not None and len(b) > 0 for b in curves["budget_iters"]]]
    if curves.empty:
        return None
    splits = sorted(curves["split"].unique(), key=lambda s: (is_ood(pd.Series([s]))[0], curves.loc[curves["split"] == s, "size"].max()))
    variants = ordered_variants(curves)
    style = styles(variants)
    shared = _shared_parts(variants)
    fig, axes = _subplots(len(splits))
    for ax, split in zip(_panel_axes(axes, len(splits)), splits):
        for variant in variants:
            sub = curves[(curves["split"] == split) & (curves["variant_label"] == variant)]
            if sub.empty:
                continue
            budgets = np.asarray(sub["budget_iters"].iloc[0], float)
            accs = np.stack([np.asarray(a, float) for a in sub["budget_acc"] if len(a) == budgets.size])
            _line(ax, budgets, accs.mean(0), style[variant], _drop(variant, shared))
        cap = curves.loc[curves["split"] == split, "eval_cap"].max()
        ax.axvline(cap, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(split)
        ax.set_xlabel("loop budget (dashed: cap)")
    _label_rows(axes, "exact accuracy,\nlearned trials")
    fig.suptitle(f"{task}: test-time compute (accuracy read out at each budget)", fontsize=FONT)
    fig.tight_layout()
    _legend(fig, axes)
    return _save(fig, layout.figure(f"{slug(task)}_compute_curve"))


def plot_task(frame: pd.DataFrame, task: str, layout: SweepDir) -> list[Path]:
    """All figures for one task, from its ok rows; returns the written paths."""
    rows = frame[(frame["task_label"] == task) & frame["status_ok"]]
    if rows.empty:
        return []
    paths = [plot_ood_accuracy(rows, task, layout), plot_halting(rows, task, layout),
             plot_stability(rows, task, layout), plot_compute_curve(rows, task, layout)]
    return [p for p in paths if p is not None]
