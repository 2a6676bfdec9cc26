"""Verdicts on the papers' claims: effects with hierarchical-bootstrap intervals, judged against
minimum effects fixed here, before any data (SGLT = Stability and Generalization in Looped
Transformers, Labovich 2026; FPRM = Fixed-Point Reasoners, Movahedi et al. 2026).

Rules, in the order they apply:

1. **Competence first.** A trial counts only if it *learned*: in-distribution exact accuracy >=
   ``min_id_acc`` (spec ``report.min_id_acc``, default 0.95). An arm (a variant) with fewer than
   ``MIN_LEARNED_SEEDS`` learned seeds cannot carry a verdict: its part is
   ``inconclusive: undertrained (k/n learned)``, never contradicted.
2. **Intervals.** Each part (a task, a matched pair of variants, a regime arm) states an effect and
   its 95% hierarchical-bootstrap interval (``bootstrap.py``: seeds, then instances; differences
   paired by seed). supported = the interval clears the part's minimum effect in the predicted
   direction; contradicted = it clears it in the opposite direction; otherwise inconclusive
   ("no effect >= the minimum" when the interval sits inside both bounds).
3. **Parts combine by a stated rule.** Each claim is stated as general, so it is *supported* when
   every part is supported (an intersection-union test: each part at one-sided level ALPHA keeps
   the claim at ALPHA, no correction needed); *contradicted* when some part contradicts it after
   Holm's step-down correction over the parts that carry data (one-sided bootstrap p-values at
   family-wise level ALPHA), so one noisy part among many does not break a claim; otherwise
   *undertrained* when a part is, else *inconclusive*.

Claims and their effects:

1. Recall beats no recall OOD (SGLT): per task x matched context x recall arm, paired by seed,
   mean OOD exact accuracy of recall minus none; minimum effect MIN_ACC_EFFECT.
2. Recall + outer norm: fixed points reachable and stable in every spectral regime (SGLT): per
   task x regime label x arm, reachability (share of instances converged, r < tol) must clear
   REACH_MIN and the measured rho(dF/dz) at z* must stay below RHO_MAX; the measured rho is shown.
3. Without recall the fixed point has near-zero input-dependence (SGLT): per task x matched
   context x recall arm, on the same splits (those where both arms' probes verified a fixed point),
   paired by seed: implicit derivative ||dz*/dx v|| of recall minus none; minimum effect
   MIN_DERIVATIVE_EFFECT. Basin-jump fractions of the no-recall arm are shown beside it.
4. Internal >= standard recall on sudoku with outer norm (SGLT), non-inferiority: internal minus
   standard OOD accuracy, paired by seed; supported when the interval stays above -NONINF_MARGIN.
5. Iterations grow with difficulty (FPRM): per task, Spearman rho(difficulty, iterations) on the
   *converged* instances of each learned trial (a capped instance's count is the cap, not its
   need), averaged over trials; minimum effect MIN_RHO_EFFECT; the capped share is shown.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd

from orchestrator.report import bootstrap
from orchestrator.report.bootstrap import Estimate
from orchestrator.report.frame import CAPPED, CONVERGED, CYCLED, is_ood, outcome_shares, outcomes_of, prepare

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
UNDERTRAINED = "inconclusive: undertrained"

MIN_LEARNED_SEEDS = 3
"""An arm needs this many learned seeds to carry a verdict."""
ALPHA = 0.025
"""One-sided level of every decision: the tail of a 95% two-sided interval."""
MIN_ACC_EFFECT = 0.05
"""Claim 1: recall must beat no recall by at least 5 points of OOD exact accuracy."""
REACH_MIN = 0.9
"""Claim 2: share of instances reaching r < tol within the cap."""
RHO_MAX = 1.0
"""Claim 2: rho(dF/dz) at z* below this = locally contractive, stable backprop through z*."""
MIN_DERIVATIVE_EFFECT = 0.05
"""Claim 3: recall's median ||dz*/dx v|| (unit v) must exceed no recall's by at least this."""
VERIFIED_MIN = 0.5
"""Claim 3: a trial's split counts when at least this share of its probe subset reached a
verified fixed point (the derivative is a property of a fixed point)."""
NONINF_MARGIN = 0.02
"""Claim 4: internal may trail standard by at most this much accuracy and still count as >=."""
MIN_RHO_EFFECT = 0.3
"""Claim 5: Spearman rho(difficulty, iterations) must be at least this (a moderate correlation)."""
MIN_INSTANCES = 10
"""Claim 5: converged instances a trial needs for its rank correlation."""

CLAIMS = {
    1: "Recall beats no recall out of distribution",
    2: "Recall + outer norm: fixed points reachable and stable in every spectral regime",
    3: "Without recall the fixed point has near-zero input-dependence",
    4: "Internal recall >= standard recall on sudoku with outer norm",
    5: "Iterations to converge grow with difficulty (adaptive compute)",
}
MIN_EFFECTS = {
    1: f"recall - none >= +{MIN_ACC_EFFECT} OOD accuracy",
    2: f"reachability >= {REACH_MIN} and rho(dF/dz) < {RHO_MAX}",
    3: f"derivative(recall) - derivative(none) >= +{MIN_DERIVATIVE_EFFECT}",
    4: f"internal - standard >= -{NONINF_MARGIN} OOD accuracy",
    5: f"Spearman rho(difficulty, iterations) >= +{MIN_RHO_EFFECT} on converged instances",
}
RULE = (f"supported: every part's 95% interval clears its minimum effect; contradicted: some part "
        f"clears it in the opposite direction after Holm over the parts with data (one-sided "
        f"{ALPHA}); a part with an arm of < {MIN_LEARNED_SEEDS} learned seeds is undertrained")


@dataclass
class Part:
    """One piece of evidence for a claim."""

    name: str
    verdict: str
    """SUPPORTED, CONTRADICTED, INCONCLUSIVE or UNDERTRAINED (this part alone)."""
    evidence: str
    p_against: float = math.nan
    """One-sided bootstrap p-value against the claim (Holm's input); NaN without data."""
    note: str = ""
    """Why inconclusive or undertrained."""


@dataclass
class Verdict:
    """A claim's verdict, the effects behind it and the rule that combined them."""

    claim_id: int
    claim: str
    verdict: str
    """SUPPORTED, CONTRADICTED, INCONCLUSIVE or UNDERTRAINED."""
    detail: str
    """For UNDERTRAINED: '(k/n learned ...)'; empty otherwise."""
    evidence: str
    """Effect [95% interval] per part."""
    min_effect: str
    reason: str
    parts: dict[str, str] = field(default_factory=dict)
    """Verdict of each part on its own."""

    @property
    def label(self) -> str:
        return f"{self.verdict} {self.detail}".strip()


def decide(estimate: Estimate, support_above: float, contradict_below: float) -> tuple[str, float, str]:
    """(verdict, p_against, note) of one part whose effect the claim predicts > support_above."""
    if math.isnan(estimate.low):
        return INCONCLUSIVE, math.nan, "no interval"
    p_against = estimate.p_at_least(contradict_below)
    if estimate.low > support_above:
        return SUPPORTED, p_against, ""
    if estimate.high < contradict_below:
        return CONTRADICTED, p_against, ""
    if estimate.low >= contradict_below and estimate.high <= support_above:
        return INCONCLUSIVE, p_against, "no effect beyond the minimum (interval inside both bounds)"
    return INCONCLUSIVE, p_against, "interval crosses the minimum effect"


def holm_rejections(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    order = np.argsort(p_values, kind="mergesort")
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] <= alpha / (m - rank):
            rejected[i] = True
        else:
            break
    return rejected


def combine(claim_id: int, parts: list[Part], skipped: list[str]) -> Verdict:
    """The claim's verdict from its parts (module rule 3)."""
    evidence = "; ".join(p.evidence for p in parts) or "-"
    no_data = f"; no data for {', '.join(skipped)}" if skipped else ""
    base = dict(claim_id=claim_id, claim=CLAIMS[claim_id], evidence=evidence, min_effect=MIN_EFFECTS[claim_id],
                parts={p.name: p.verdict for p in parts})
    if not parts:
        return Verdict(verdict=INCONCLUSIVE, detail="", reason="no data for this claim"
                       + (f": {'; '.join(skipped)}" if skipped else ""), **base)
    with_data = [p for p in parts if p.verdict != UNDERTRAINED and not math.isnan(p.p_against)]
    rejected = holm_rejections([p.p_against for p in with_data])
    broken = [p for p, r in zip(with_data, rejected) if r and p.verdict == CONTRADICTED]
    if broken:
        names = ", ".join(f"{p.name} (p={p.p_against:.3g})" for p in broken)
        return Verdict(verdict=CONTRADICTED, detail="", reason=f"contradicted in {names}, Holm over "
                       f"{len(with_data)} part(s) with data" + no_data, **base)
    if all(p.verdict == SUPPORTED for p in parts):
        return Verdict(verdict=SUPPORTED, detail="", reason=f"supported in all {len(parts)} part(s)" + no_data,
                       **base)
    lone = [p.name for p in with_data if p.verdict == CONTRADICTED]
    lone_text = (f"; {', '.join(lone)} contradict(s) alone but not after Holm over {len(with_data)} part(s)"
                 if lone else "")
    under = [p for p in parts if p.verdict == UNDERTRAINED]
    if under:
        detail = _undertrained_detail(under, len(parts))
        decided = [p.name for p in parts if p.verdict == SUPPORTED]
        reason = (f"{len(under)} of {len(parts)} part(s) undertrained"
                  + (f"; supported in {', '.join(decided)}" if decided else "") + lone_text + no_data)
        return Verdict(verdict=UNDERTRAINED, detail=detail, reason=reason, **base)
    open_parts = ", ".join(f"{p.name} ({p.note})" if p.note else p.name for p in parts if p.verdict != SUPPORTED)
    return Verdict(verdict=INCONCLUSIVE, detail="", reason=f"not decided in {open_parts}" + lone_text + no_data,
                   **base)


def _undertrained_detail(under: list[Part], n_parts: int) -> str:
    """'(k/n learned)' for one arm, else the range over the arms of the undertrained parts."""
    counts = sorted({(int(k), int(n)) for p in under for k, n in re.findall(r"(\d+)/(\d+) learned", p.note)},
                    key=lambda kn: (kn[0] / max(kn[1], 1), kn))
    if not counts:
        return f"({'; '.join(p.note for p in under)})"
    span = f"{counts[0][0]}/{counts[0][1]}" + (f"-{counts[-1][0]}/{counts[-1][1]}" if len(counts) > 1 else "")
    parts = f"; {len(under)} of {n_parts} parts" if n_parts > 1 else ""
    return f"({span} learned{' per arm' if len(counts) > 1 else ''}{parts})"


# ----------------------------------------------------------------------- arms and their numbers

def learned_text(rows: pd.DataFrame) -> str:
    """'k/n learned' over the trials of ``rows``."""
    trials = rows.drop_duplicates("trial_id")
    return f"{int(trials['learned'].sum())}/{len(trials)} learned"


def n_learned(rows: pd.DataFrame) -> int:
    return int(rows.drop_duplicates("trial_id")["learned"].sum())


def _counts(rows: pd.DataFrame, splits: list[str], seeds: list) -> tuple[np.ndarray, np.ndarray]:
    """(S, K) correct counts and instance counts per seed and split (0 where missing)."""
    correct, total = np.zeros((len(seeds), len(splits))), np.zeros((len(seeds), len(splits)))
    seed_row = {s: i for i, s in enumerate(seeds)}
    split_col = {s: j for j, s in enumerate(splits)}
    for seed, split, acc, n, inst in zip(rows["seed"], rows["split"], rows["exact_acc"], rows["n"],
                                         rows["instance_correct"]):
        if seed not in seed_row or split not in split_col or acc is None or pd.isna(acc):
            continue
        i, j = seed_row[seed], split_col[split]
        if inst is not None and len(inst):
            correct[i, j], total[i, j] = float(np.sum(inst)), float(len(inst))
        elif n is not None and not pd.isna(n) and n > 0:
            correct[i, j], total[i, j] = round(float(acc) * float(n)), float(n)
    return correct, total


def split_accuracy(rows: pd.DataFrame, rng: np.random.Generator) -> Estimate:
    """Exact accuracy of the learned trials of ``rows`` (one variant), over all its splits."""
    learned = rows[rows["learned"]]
    seeds = sorted(learned["seed"].dropna().unique())
    splits = sorted(learned["split"].unique())
    return bootstrap.accuracy(*_counts(learned, splits, seeds), rng) if seeds else bootstrap.EMPTY


def reachability_estimate(rows: pd.DataFrame, rng: np.random.Generator) -> Estimate:
    """Share of instances converged over the learned trials of one arm (counts from reachability x n)."""
    learned = rows[rows["learned"]].dropna(subset=["reachability", "n"])
    seeds = sorted(learned["seed"].dropna().unique())
    if not seeds:
        return bootstrap.EMPTY
    splits = sorted(learned["split"].unique())
    frame = learned.assign(exact_acc=learned["reachability"], instance_correct=None)
    return bootstrap.accuracy(*_counts(frame, splits, seeds), rng)


def _gate(arms: dict[str, pd.DataFrame]) -> Optional[str]:
    """None when every arm has >= MIN_LEARNED_SEEDS learned seeds, else the 'k/n learned' note."""
    short = {name: rows for name, rows in arms.items() if n_learned(rows) < MIN_LEARNED_SEEDS}
    if not short:
        return None
    return ", ".join(f"{name} {learned_text(rows)}" for name, rows in arms.items())


def _matched_pairs(rows: pd.DataFrame, better: tuple[str, ...], worse: str):
    """(context, better recall, rows of the better arm, rows of the worse arm) for every context
    that has both a `better` recall variant and the `worse` one."""
    for context, sub in rows.groupby("context_label", sort=True, dropna=False):
        worse_rows = sub[sub["recall"] == worse]
        if worse_rows.empty:
            continue
        for recall in better:
            better_rows = sub[sub["recall"] == recall]
            if not better_rows.empty:
                yield context, recall, better_rows, worse_rows


def _pair_name(task: str, context: str, recall: str, worse: str) -> str:
    return f"{task}/{context or 'all'}: {recall} vs {worse}"


def _paired_ood_part(name: str, a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str,
                     support_above: float, contradict_below: float, rng) -> Part:
    """A part comparing the OOD accuracy of arms a and b, paired by seed over learned trials."""
    gate = _gate({a_name: a, b_name: b})
    seeds = sorted(set(a.loc[a["learned"], "seed"]) & set(b.loc[b["learned"], "seed"]))
    splits = sorted(set(a.loc[is_ood(a["split"]), "split"]) & set(b.loc[is_ood(b["split"]), "split"]))
    estimate = (bootstrap.paired_accuracy_difference(*_counts(a, splits, seeds), *_counts(b, splits, seeds), rng)
                if seeds and splits else bootstrap.EMPTY)
    text = f"{name}: {estimate.text()} over {len(seeds)} paired learned seed(s)"
    if gate is not None:
        return Part(name, UNDERTRAINED, text + f" [{gate}]", note=gate)
    if len(seeds) < MIN_LEARNED_SEEDS:
        note = f"{len(seeds)} seed(s) learned in both arms"
        return Part(name, UNDERTRAINED, text + f" [{note}]", note=note)
    verdict, p_against, note = decide(estimate, support_above, contradict_below)
    return Part(name, verdict, text, p_against, note)


def claim_recall_beats_none(frame: pd.DataFrame, rng) -> Verdict:
    parts, skipped = [], []
    for task, rows in frame.groupby("task_label", sort=True):
        pairs = list(_matched_pairs(rows, ("standard", "internal"), "none"))
        if not pairs:
            skipped.append(f"{task} (no matched recall / no-recall variants)")
        for context, recall, better, worse in pairs:
            name = _pair_name(task, context, recall, "none")
            parts.append(_paired_ood_part(name, better, worse, recall, "none", MIN_ACC_EFFECT, -MIN_ACC_EFFECT, rng))
    return combine(1, parts, skipped)


def claim_recall_norm_stable(frame: pd.DataFrame, rng) -> Verdict:
    normed = frame[frame["recall"].isin(["standard", "internal"]) & frame["outer_norm"].notna()
                   & (frame["outer_norm"] != "none")]
    parts, skipped = [], []
    if normed.empty:
        skipped.append("recall != none with outer_norm != none (no such ok trials)")
    groups = list(normed.groupby(["task_label", "regime", "variant_label"], sort=True))
    short = [f"{t}/{r}/{rows['recall'].iloc[0]}+{rows['outer_norm'].iloc[0]}" for (t, r, _), rows in groups]
    for ((task, regime, variant), rows), name in zip(groups, short):
        if short.count(name) > 1:  # another axis varies too: the full variant label tells them apart
            name = f"{task}/{regime}/{variant}"
        reach = reachability_estimate(rows, rng)
        rho = bootstrap.seed_level(rows[rows["learned"]].groupby("seed")["spectral_radius"].mean().to_numpy(), rng)
        text = f"{name}: reachability {reach.text('.3f')}, measured rho {rho.text('.3f')}"
        gate = _gate({"arm": rows})
        if gate is not None:
            parts.append(Part(name, UNDERTRAINED, text + f" [{learned_text(rows)}]", note=learned_text(rows)))
            continue
        reach_v, reach_p, reach_note = decide(reach, REACH_MIN, REACH_MIN)
        negated = Estimate(-rho.effect, -rho.high, -rho.low, rho.n_seeds, -rho.replicates)
        rho_v, rho_p, rho_note = (decide(negated, -RHO_MAX, -RHO_MAX) if rho.n_seeds
                                  else (INCONCLUSIVE, math.nan, "rho not measured"))
        verdicts = (reach_v, rho_v)
        verdict = (CONTRADICTED if CONTRADICTED in verdicts else
                   SUPPORTED if verdicts == (SUPPORTED, SUPPORTED) else INCONCLUSIVE)
        p_values = [p for p in (reach_p, rho_p) if not math.isnan(p)]
        p_against = min(1.0, len(p_values) * min(p_values)) if p_values else math.nan  # Bonferroni over 2 axes
        notes = "; ".join(n for n in (reach_note and f"reachability: {reach_note}", rho_note and f"rho: {rho_note}") if n)
        parts.append(Part(name, verdict, text, p_against, notes))
    return combine(2, parts, skipped)


def _derivative_by_seed(rows: pd.DataFrame, splits: list[str]) -> pd.Series:
    """Mean implicit derivative over ``splits`` per learned seed."""
    use = rows[rows["learned"] & rows["split"].isin(splits)]
    return use.groupby("seed")["input_derivative"].mean()


def _verified_splits(rows: pd.DataFrame) -> set[str]:
    """Splits on which every learned trial of the arm measured the derivative at verified fixed points."""
    learned = rows[rows["learned"]]
    good = learned[(learned["probe_verified"] >= VERIFIED_MIN) & learned["input_derivative"].notna()]
    bad = set(learned["split"]) - set(good["split"])
    return set(good["split"]) - bad


def claim_no_recall_input_independent(frame: pd.DataFrame, rng) -> Verdict:
    parts, skipped = [], []
    for task, rows in frame.groupby("task_label", sort=True):
        if rows["input_derivative"].isna().all():
            skipped.append(f"{task} (input_derivative not measured: a schema-1 table predates the implicit "
                           f"derivative; its finite difference measured basin jumps)")
            continue
        pairs = list(_matched_pairs(rows, ("standard", "internal"), "none"))
        if not pairs:
            skipped.append(f"{task} (no matched recall / no-recall variants)")
        for context, recall, better, worse in pairs:
            name = _pair_name(task, context, recall, "none")
            splits = sorted(_verified_splits(better) & _verified_splits(worse))
            a, b = _derivative_by_seed(better, splits), _derivative_by_seed(worse, splits)
            seeds = sorted(set(a.index) & set(b.index))
            estimate = (bootstrap.paired_seed_level(a[seeds].to_numpy(), b[seeds].to_numpy(), rng)
                        if seeds else bootstrap.EMPTY)
            jumps = worse[worse["learned"] & worse["split"].isin(splits)][
                ["basin_jump_1e-4", "basin_jump_1e-3", "basin_jump_1e-2"]].mean()
            text = (f"{name}: {estimate.text()} on {len(splits)} common verified split(s) "
                    f"({', '.join(splits) or 'none'}); none's basin jumps at eps 1e-4/1e-3/1e-2: "
                    + "/".join("n/a" if pd.isna(j) else f"{j:.2f}" for j in jumps))
            gate = _gate({recall: better, "none": worse})
            if gate is not None or len(seeds) < MIN_LEARNED_SEEDS:
                note = gate or f"{len(seeds)} paired learned seed(s) with a verified fixed point"
                parts.append(Part(name, UNDERTRAINED, text + f" [{note}]", note=note))
                continue
            verdict, p_against, note = decide(estimate, MIN_DERIVATIVE_EFFECT, -MIN_DERIVATIVE_EFFECT)
            parts.append(Part(name, verdict, text, p_against, note))
    return combine(3, parts, skipped)


def claim_internal_ge_standard_sudoku(frame: pd.DataFrame, rng) -> Verdict:
    sudoku = frame[(frame["task"] == "sudoku") & frame["outer_norm"].notna() & (frame["outer_norm"] != "none")]
    if sudoku.empty:
        return combine(4, [], ["sudoku with outer norm (no ok sudoku trials with outer_norm != none)"])
    parts, skipped = [], []
    for task, rows in sudoku.groupby("task_label", sort=True):
        pairs = list(_matched_pairs(rows, ("internal",), "standard"))
        if not pairs:
            skipped.append(f"{task} (no matched internal / standard variants)")
        for context, recall, better, worse in pairs:
            name = _pair_name(task, context, recall, "standard")
            parts.append(_paired_ood_part(name, better, worse, "internal", "standard",
                                          -NONINF_MARGIN, -NONINF_MARGIN, rng))
    return combine(4, parts, skipped)


def converged_pairs(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(difficulty, iterations) of the converged instances of ``rows``, pooled over rows."""
    diffs, iters = [], []
    cols = ["instance_difficulty", "instance_iters", "eval_cap", "instance_converged", "instance_cycled",
            "cycled_frac"]
    for d, it, cap, conv, cyc, frac in zip(*(rows[c] for c in cols)):
        if d is None or it is None or len(d) == 0 or len(d) != len(it):
            continue
        keep = outcomes_of(it, cap, conv, cyc, frac) == CONVERGED
        diffs.append(np.asarray(d, float)[keep])
        iters.append(np.asarray(it, float)[keep])
    if not diffs:
        return np.empty(0), np.empty(0)
    return np.concatenate(diffs), np.concatenate(iters)


def claim_iterations_grow(frame: pd.DataFrame, rng) -> Verdict:
    parts, skipped = [], []
    for task, rows in frame[frame["status_ok"]].groupby("task_label", sort=True):
        learned = rows[rows["learned"]]
        per_trial = [converged_pairs(t) for _, t in learned.groupby("trial_id", sort=True)]
        usable = [(d, it) for d, it in per_trial if d.size >= MIN_INSTANCES]
        shares = outcome_shares(learned)
        key = rows["difficulty_key"].dropna()
        name = f"{task} ({key.iloc[0] if len(key) else 'difficulty'})"
        if rows["instance_iters"].isna().all():
            skipped.append(f"{task} (no per-instance iterations)")
            continue
        estimate = bootstrap.correlation(usable, rng)
        shown = "/".join("n/a" if math.isnan(shares[o]) else f"{shares[o]:.0%}" for o in (CONVERGED, CYCLED, CAPPED))
        if len(usable) < len(per_trial):
            shown += f"; {len(per_trial) - len(usable)} learned trial(s) with < {MIN_INSTANCES} converged instances known"
        text = (f"{name}: rho {estimate.text()} over {estimate.n_seeds} learned trial(s) with >= {MIN_INSTANCES} "
                f"converged instances; converged/cycled/capped {shown}")
        if n_learned(rows) < MIN_LEARNED_SEEDS:
            parts.append(Part(name, UNDERTRAINED, text + f" [{learned_text(rows)}]", note=learned_text(rows)))
            continue
        if estimate.n_seeds < MIN_LEARNED_SEEDS:
            note = f"{estimate.n_seeds} learned trial(s) with >= {MIN_INSTANCES} converged, non-constant instances"
            parts.append(Part(name, INCONCLUSIVE, text, note=note))
            continue
        verdict, p_against, note = decide(estimate, MIN_RHO_EFFECT, -MIN_RHO_EFFECT)
        parts.append(Part(name, verdict, text, p_against, note))
    return combine(5, parts, skipped)


CLAIM_FUNCTIONS: dict[int, Callable[[pd.DataFrame, np.random.Generator], Verdict]] = {
    1: claim_recall_beats_none, 2: claim_recall_norm_stable, 3: claim_no_recall_input_independent,
    4: claim_internal_ge_standard_sudoku, 5: claim_iterations_grow}


def compute_verdicts(df: pd.DataFrame, min_id_acc: float | None = None) -> list[Verdict]:
    """Verdicts on claims 1-5 from a results table (raw, as read from Parquet, or prepared).
    Each claim draws from its own generator seeded by BOOT_SEED, so verdicts are reproducible."""
    frame = df if "variant_label" in df.columns and min_id_acc is None else prepare(df, min_id_acc)
    ok = frame.loc[frame["status_ok"], [c for c in CLAIM_COLUMNS if c in frame.columns]]
    return [fn(ok, bootstrap.make_rng()) for fn in CLAIM_FUNCTIONS.values()]


CLAIM_COLUMNS = ("trial_id", "task", "task_label", "variant_label", "context_label", "recall", "outer_norm",
                 "regime", "seed", "split", "size", "n", "exact_acc", "instance_correct", "learned", "status_ok",
                 "reachability", "spectral_radius", "input_derivative", "probe_verified", "basin_jump_1e-4",
                 "basin_jump_1e-3", "basin_jump_1e-2", "instance_iters", "instance_difficulty", "eval_cap",
                 "instance_converged", "instance_cycled", "cycled_frac", "difficulty_key")
"""The columns the claims read (a narrow copy keeps pandas' row selections cheap on wide tables)."""
