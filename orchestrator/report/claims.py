"""Verdicts on the papers' claims, computed from a sweep's results rows with explicit thresholds.

Each claim (SGLT = Stability and Generalization in Looped Transformers, Labovich 2026; FPRM =
Fixed-Point Reasoners, Movahedi et al. 2026) is judged in *parts* (a task, or a task x spectral
regime), then the parts are combined by one rule, because every claim is stated as general:

- any part contradicted -> **contradicted** (one clear counterexample breaks a general claim);
- every part supported -> **supported**;
- otherwise (a part within noise, or no part with data) -> **inconclusive**, with the reason.

Parts without the data a claim needs are skipped and named in the reason. Per-trial numbers come
from ``report_data.trial_summary`` (ok trials only; OOD accuracy = mean exact accuracy over the
trial's ``ood_*`` splits; stability axes = mean over all its splits). "Seed spread" is the sample
std across seeds of one variant (the largest over the variants a part compares).

Thresholds (module constants, so a reader sees them and a test can import them):

1. Recall beats no recall OOD (SGLT): per task, matched variants (same other axes), recall in
   {standard, internal} minus recall=none, over the pairs where both variants have MIN_SEEDS seeds;
   supported if the mean difference > margin, contradicted if < -margin,
   margin = max(seed spread, MIN_MARGIN).
2. Recall + outer norm reachable and stable in every spectral regime (SGLT): per task x regime,
   recall != none and outer_norm != none; supported if reachability - spread >= REACH_MIN and
   spectral radius + spread < RHO_MAX; contradicted if reachability + spread < REACH_MIN or spectral
   radius - spread >= RHO_MAX.
3. No recall has near-zero input-dependence (SGLT): per task, using only eval splits where at least
   FIXED_POINT_REACHED of the instances reached a fixed point (the claim is about fixed points; a
   state that never settles measures divergence), with the seed spread against the claim: supported if none's (mean + spread) < DEP_RATIO_SUPPORT x recall's (mean - spread), or
   < DEP_ABS; contradicted if none's (mean - spread) >= DEP_RATIO_CONTRADICT x recall's
   (mean + spread) and >= DEP_ABS.
4. Internal >= standard recall on sudoku with outer norm (SGLT), a non-inferiority test: matched
   variants with MIN_SEEDS seeds each, d = internal - standard; supported if
   d - spread >= -NONINF_MARGIN, contradicted if d + spread < -NONINF_MARGIN.
5. Iterations grow with difficulty (FPRM's adaptive compute): per task, the median over variants of
   Spearman rho(instance difficulty, iterations) pooled over a variant's ok rows, and of rho(split
   size, mean iterations); each measure: supported if >= RHO_SUPPORT, contradicted if
   < RHO_CONTRADICT; the task combines the measures available by the rule above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.report.frame import FIXED_POINT_REACHED, finite_mean, prepare, seed_std, trial_summary

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VerdictName = Literal["supported", "contradicted", "inconclusive"]

MIN_SEEDS = 2
"""Comparisons (claims 1, 4) need this many seeds per variant to know the seed spread."""
MIN_MARGIN = 0.01
"""Smallest accuracy difference that counts (claim 1), even when seeds agree exactly."""
REACH_MIN = 0.9
"""Claim 2: fraction of instances reaching r < tol within the cap."""
RHO_MAX = 1.0
"""Claim 2: spectral radius of dF/dz at z* must be below this (locally contractive)."""
DEP_RATIO_SUPPORT = 0.1
DEP_RATIO_CONTRADICT = 0.5
DEP_ABS = 1e-3
"""Claim 3: input-dependence below this is near zero whatever recall does."""
NONINF_MARGIN = 0.02
"""Claim 4: internal may trail standard by at most this much accuracy and still count as >=."""
RHO_SUPPORT = 0.5
RHO_CONTRADICT = 0.1
"""Claim 5: Spearman rho thresholds."""
MIN_INSTANCES = 10
"""Claim 5: pooled instances needed for an instance-level rho."""
MIN_SIZES = 3
"""Claim 5: distinct split sizes needed for a size-level rho."""

CLAIMS = {
    1: "Recall beats no recall out of distribution",
    2: "Recall + outer norm: fixed points reachable and stable in every spectral regime",
    3: "Without recall the fixed point has near-zero input-dependence",
    4: "Internal recall >= standard recall on sudoku with outer norm",
    5: "Iterations to converge grow with difficulty (adaptive compute)",
}


@dataclass
class Part:
    """One piece of evidence for a claim (a task, or a task x regime)."""

    name: str
    verdict: VerdictName
    evidence: str
    spread: float = math.nan


@dataclass
class Verdict:
    """A claim's verdict, the numbers behind it, and the seed spread."""

    claim_id: int
    claim: str
    verdict: VerdictName
    evidence: str
    """The numbers that bear on the claim, one clause per part."""
    seed_spread: float
    """Largest seed std among the parts (NaN when no part had two seeds)."""
    reason: str
    """Why the verdict came out this way (thresholds met or missed, or what data is missing)."""
    parts: dict[str, str] = field(default_factory=dict)
    """Verdict per part (task or task x regime)."""


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if < 3 finite pairs or a constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    order = np.argsort(values, kind="mergesort")
    uniq, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0  # (U,) mean rank of each tie group
    ranks = np.empty(values.size)
    ranks[order] = average[inverse]
    return ranks


def combine(claim_id: int, parts: list[Part], skipped: list[str]) -> Verdict:
    """Apply the module's combination rule to a claim's parts."""
    verdicts = [p.verdict for p in parts]
    spreads = [p.spread for p in parts if not math.isnan(p.spread)]
    note = f"; no data for {', '.join(skipped)}" if skipped else ""
    if not parts:
        verdict, reason = INCONCLUSIVE, "no data for this claim" + (f": {'; '.join(skipped)}" if skipped else "")
        note = ""
    elif CONTRADICTED in verdicts:
        bad = [p.name for p in parts if p.verdict == CONTRADICTED]
        verdict, reason = CONTRADICTED, f"contradicted in {', '.join(bad)}"
    elif all(v == SUPPORTED for v in verdicts):
        verdict, reason = SUPPORTED, f"supported in all {len(parts)} part(s)"
    else:
        open_parts = [p.name for p in parts if p.verdict == INCONCLUSIVE]
        verdict, reason = INCONCLUSIVE, f"not decided in {', '.join(open_parts)}"
    return Verdict(claim_id, CLAIMS[claim_id], verdict, "; ".join(p.evidence for p in parts) or "-",
                   max(spreads) if spreads else math.nan, reason + note,
                   {p.name: p.verdict for p in parts})


def _per_variant(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, seed std and seed count of a trial metric per variant (NaN metrics dropped)."""
    rows = trials.dropna(subset=[metric])
    if rows.empty:
        return pd.DataFrame(columns=["variant_label", "context_label", "recall", "mean", "std", "n"])
    grouped = rows.groupby(["variant_label", "context_label", "recall"], dropna=False)[metric]
    return grouped.agg(mean="mean", std=seed_std, n="count").reset_index()


def _nanmax(values) -> float:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(arr.max()) if arr.size else math.nan


def _matched_diff(variants: pd.DataFrame, better: tuple[str, ...], worse: str):
    """Compare each variant with recall in `better` to the recall=`worse` variant of the same
    context (all other axes equal), over the pairs where both have MIN_SEEDS seeds.

    Returns None when no context has both, else a dict: diff (mean of pair differences), better and
    worse (mean metric), spread (largest seed std), pairs (used), all_pairs (matched)."""
    pairs = []
    for _, b in variants[variants["recall"].isin(better)].iterrows():
        match = variants[(variants["recall"] == worse) & (variants["context_label"] == b["context_label"])]
        for _, w in match.iterrows():
            pairs.append((b["mean"], w["mean"], _nanmax([b["std"], w["std"]]), min(b["n"], w["n"])))
    if not pairs:
        return None
    used = [p for p in pairs if p[3] >= MIN_SEEDS]
    out = {"pairs": len(used), "all_pairs": len(pairs)}
    b_mean, w_mean, stds, _ = zip(*(used or pairs))
    out.update(diff=float(np.mean(np.subtract(b_mean, w_mean))), better=float(np.mean(b_mean)),
               worse=float(np.mean(w_mean)), spread=_nanmax(stds))
    return out


def _pairs_text(found: dict) -> str:
    return f"{found['pairs']}/{found['all_pairs']} matched pair(s) with >= {MIN_SEEDS} seeds"


def claim_recall_beats_none(trials: pd.DataFrame) -> Verdict:
    parts, skipped = [], []
    for task, sub in trials.groupby("task_label", sort=True):
        found = _matched_diff(_per_variant(sub, "ood_acc"), ("standard", "internal"), "none")
        if found is None:
            skipped.append(f"{task} (no matched recall / no-recall variants with OOD accuracy)")
            continue
        diff, spread = found["diff"], found["spread"]
        margin = max(_zero_if_nan(spread), MIN_MARGIN)
        text = (f"{task}: recall {found['better']:.3f} vs none {found['worse']:.3f} (diff {diff:+.3f}, "
                f"margin {margin:.3f}, {_pairs_text(found)})")
        if not found["pairs"]:
            verdict = INCONCLUSIVE
        else:
            verdict = SUPPORTED if diff > margin else CONTRADICTED if diff < -margin else INCONCLUSIVE
        parts.append(Part(task, verdict, text, spread))
    return combine(1, parts, skipped)


def claim_recall_norm_stable(trials: pd.DataFrame) -> Verdict:
    normed = trials[trials["recall"].isin(["standard", "internal"])
                    & trials["outer_norm"].notna() & (trials["outer_norm"] != "none")]
    parts, skipped = [], []
    if normed.empty:
        skipped.append("recall != none with outer_norm != none (no such ok trials)")
    for (task, regime), sub in normed.groupby(["task_label", "regime"], sort=True):
        reach, rho = _per_variant(sub, "reachability"), _per_variant(sub, "spectral_radius")
        name = f"{task}/{regime}"
        if reach.empty or rho.empty:
            missing = "reachability" if reach.empty else "spectral radius"
            parts.append(Part(name, INCONCLUSIVE, f"{name}: {missing} not measured"))
            continue
        r_mean, r_sd = finite_mean(reach["mean"]), _zero_if_nan(_nanmax(reach["std"]))
        p_mean, p_sd = finite_mean(rho["mean"]), _zero_if_nan(_nanmax(rho["std"]))
        if r_mean - r_sd >= REACH_MIN and p_mean + p_sd < RHO_MAX:
            verdict = SUPPORTED
        elif r_mean + r_sd < REACH_MIN or p_mean - p_sd >= RHO_MAX:
            verdict = CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        text = (f"{name}: reachability {r_mean:.3f}±{r_sd:.3f} (need >= {REACH_MIN}), "
                f"spectral radius {p_mean:.3f}±{p_sd:.3f} (need < {RHO_MAX})")
        parts.append(Part(name, verdict, text, _nanmax([_nanmax(reach["std"]), _nanmax(rho["std"])])))
    return combine(2, parts, skipped)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def claim_no_recall_input_independent(trials: pd.DataFrame) -> Verdict:
    parts, skipped = [], []
    for task, sub in trials.groupby("task_label", sort=True):
        variants = _per_variant(sub, "input_dependence_fp")
        none, rec = variants[variants["recall"] == "none"], variants[variants["recall"].isin(["standard", "internal"])]
        if none.empty:
            skipped.append(f"{task} (no recall=none trial reached a fixed point on >= "
                           f"{FIXED_POINT_REACHED:.0%} of a split's instances)")
            continue
        n_mean, n_sd = finite_mean(none["mean"]), _zero_if_nan(_nanmax(none["std"]))
        text = f"{task}: none {n_mean:.3g}±{n_sd:.2g}"
        if rec.empty:
            verdict = SUPPORTED if n_mean + n_sd < DEP_ABS else INCONCLUSIVE
            text += f" (no recall variants; absolute threshold {DEP_ABS:g})"
        else:
            r_mean, r_sd = finite_mean(rec["mean"]), _zero_if_nan(_nanmax(rec["std"]))
            low_none, high_rec = n_mean - n_sd, r_mean + r_sd
            if n_mean + n_sd < DEP_RATIO_SUPPORT * max(r_mean - r_sd, 0.0) or n_mean + n_sd < DEP_ABS:
                verdict = SUPPORTED
            elif low_none >= DEP_RATIO_CONTRADICT * high_rec and low_none >= DEP_ABS:
                verdict = CONTRADICTED
            else:
                verdict = INCONCLUSIVE
            ratio = n_mean / r_mean if r_mean > 0 else math.inf
            text += f" vs recall {r_mean:.3g}±{r_sd:.2g} (ratio {ratio:.3g}; support < {DEP_RATIO_SUPPORT})"
        parts.append(Part(task, verdict, text, _nanmax(list(none["std"]) + list(rec["std"]))))
    return combine(3, parts, skipped)


def claim_internal_ge_standard_sudoku(trials: pd.DataFrame) -> Verdict:
    sudoku = trials[(trials["task"] == "sudoku") & trials["outer_norm"].notna() & (trials["outer_norm"] != "none")]
    if sudoku.empty:
        return combine(4, [], ["sudoku with outer norm (no ok sudoku trials with outer_norm != none)"])
    parts, skipped = [], []
    for task, sub in sudoku.groupby("task_label", sort=True):
        found = _matched_diff(_per_variant(sub, "ood_acc"), ("internal",), "standard")
        if found is None:
            skipped.append(f"{task} (no matched internal / standard variants with OOD accuracy)")
            continue
        diff, spread = found["diff"], found["spread"]
        sd = _zero_if_nan(spread)
        text = (f"{task}: internal {found['better']:.3f} vs standard {found['worse']:.3f} (diff {diff:+.3f}, "
                f"non-inferiority margin {NONINF_MARGIN}, {_pairs_text(found)})")
        if not found["pairs"]:
            verdict = INCONCLUSIVE
        else:
            verdict = (SUPPORTED if diff - sd >= -NONINF_MARGIN
                       else CONTRADICTED if diff + sd < -NONINF_MARGIN else INCONCLUSIVE)
        parts.append(Part(task, verdict, text, spread))
    return combine(4, parts, skipped)


def _rho_verdict(rho: float) -> VerdictName:
    return SUPPORTED if rho >= RHO_SUPPORT else CONTRADICTED if rho < RHO_CONTRADICT else INCONCLUSIVE


def instance_pairs(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (difficulty, iterations) per instance over rows that carry both lists."""
    diffs, iters = [], []
    for d, it in zip(rows["instance_difficulty"], rows["instance_iters"]):
        if d is None or it is None or len(d) == 0 or len(d) != len(it):
            continue
        diffs.append(np.asarray(d, dtype=float))
        iters.append(np.asarray(it, dtype=float))
    if not diffs:
        return np.empty(0), np.empty(0)
    return np.concatenate(diffs), np.concatenate(iters)


def _difficulty_rhos(rows: pd.DataFrame) -> tuple[list[float], list[float], list[float]]:
    """Per variant: pooled instance rho, size rho, and the seed std of per-trial instance rhos."""
    inst, size, spreads = [], [], []
    for _, sub in rows.groupby("variant_label"):
        d, it = instance_pairs(sub)
        if d.size >= MIN_INSTANCES:
            inst.append(spearman(d, it))
            per_trial = [spearman(*instance_pairs(t)) for _, t in sub.groupby("trial_id")]
            spreads.append(seed_std(pd.Series(per_trial, dtype=float)))
        sized = sub.dropna(subset=["size", "iters_mean"])
        if sized["size"].nunique() >= MIN_SIZES:
            size.append(spearman(sized["size"], sized["iters_mean"]))
    return _finite(inst), _finite(size), _finite(spreads)


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def claim_iterations_grow(frame: pd.DataFrame) -> Verdict:
    parts, skipped = [], []
    ok = frame[frame["status_ok"]]
    for task, rows in ok.groupby("task_label", sort=True):
        inst, size, spreads = _difficulty_rhos(rows)
        measures = []
        if inst:
            measures.append(("instance", float(np.median(inst)), len(inst)))
        if size:
            measures.append(("size", float(np.median(size)), len(size)))
        if not measures:
            skipped.append(f"{task} (no per-instance difficulty/iterations nor >= {MIN_SIZES} sizes)")
            continue
        verdicts = [_rho_verdict(rho) for _, rho, _ in measures]
        verdict = (CONTRADICTED if CONTRADICTED in verdicts
                   else SUPPORTED if all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE)
        clauses = [f"median rho({'difficulty' if kind == 'instance' else 'size'}, iters) {rho:+.2f} "
                   f"over {n} variant(s)" for kind, rho, n in measures]
        text = f"{task}: " + ", ".join(clauses) + f" (support >= {RHO_SUPPORT}, contradict < {RHO_CONTRADICT})"
        parts.append(Part(task, verdict, text, float(np.median(spreads)) if spreads else math.nan))
    return combine(5, parts, skipped)


def compute_verdicts(df: pd.DataFrame) -> list[Verdict]:
    """Verdicts on claims 1-5 from a results table (raw, as read from Parquet, or prepared)."""
    frame = df if "variant_label" in df.columns else prepare(df)
    trials = trial_summary(frame)
    return [claim_recall_beats_none(trials), claim_recall_norm_stable(trials),
            claim_no_recall_input_independent(trials), claim_internal_ge_standard_sudoku(trials),
            claim_iterations_grow(frame)]
