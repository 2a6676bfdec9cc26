"""Verdicts on the papers' claims, each as its source states it (SGLT = Stability and Generalization
in Looped Transformers, Labovich 2026; FPRM = Fixed-Point Reasoners, Movahedi et al. 2026; DT =
Deep Thinking, Bansal et al. 2022). The rules are documented in docs/statistics.md; in short:

1. **Each claim as its source states it** (``SOURCES``): the quoted sentence and its paper, the
   estimand, the arms and tasks it covers, and the decision rule. Claim 2 is SGLT's existence
   statement ("a regime"); "every spectral regime" is our extension, judged separately (claim 7).
2. **Intervals that cover** (``bootstrap.py``): 95% t-intervals on seed means (paired by seed for
   differences); no interval below 3 seeds (n and the values instead); one-sided t-test p-values
   feed Holm; P(learned) has a Clopper-Pearson interval.
3. **Gates and controls.** A trial *learned* when its in-distribution exact accuracy >=
   ``min_id_acc``. The favoured arm needs ``MIN_LEARNED_SEEDS`` learned seeds. When the disfavoured
   arm does not learn in distribution the part says so, and that failure counts for the claim (the
   intention-to-treat difference over all seeds is then judged) only when a positive control in the
   same sweep learned: the same arm under another gradient estimator (a ``cfg.grad.*`` value),
   named in the evidence. Every paired part prints its intention-to-treat line over all seeds.
4. **A part** supports when its interval clears the minimum effect in the predicted direction,
   contradicts when it clears it the other way; parts combine by intersection-union (supported =
   every part supported) and Holm over the parts with data (contradicted).
5. **Halting protocols.** Rows may carry ``halting`` (absent = 'trained'); verdicts are computed per
   protocol and a claim whose verdicts differ reads ``protocol-sensitive`` (the same verdict with
   different details, e.g. learned counts, is that verdict, each protocol's detail beside it). Cap-bound (task,
   variant, split) cells (more than ``CAP_BOUND_SHARE`` of instances at the cap; the row's
   ``cap_bound`` when stored, else derived from the instance iterations) are left out, and listed.

Every number a verdict prints is also recorded (``Recorder``) for ``estimates.parquet``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd

from orchestrator.report import bootstrap
from orchestrator.report.bootstrap import EMPTY, Estimate
from orchestrator.report.frame import (CAPPED, CONVERGED, CYCLED, NON_AXES, is_ood, outcome_shares, outcomes_of,
                                       prepare)

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
UNDERTRAINED = "inconclusive: undertrained"
NO_CONTROL = "inconclusive: no positive control"
BY_CONSTRUCTION = "holds by construction"
PROTOCOL_SENSITIVE = "protocol-sensitive"
NO_DATA_VERDICTS = (UNDERTRAINED, NO_CONTROL)

MIN_LEARNED_SEEDS = 3
"""The favoured arm (and a positive control) needs this many learned seeds."""
ALPHA = 0.025
"""One-sided level of every decision: the tail of a 95% two-sided interval."""
MIN_ACC_EFFECT = 0.05
"""Claim 1: recall must beat no recall by at least 5 points of OOD exact accuracy."""
REACH_MIN = 0.9
"""Claim 2: share of in-distribution instances reaching r < tol within the cap."""
RHO_MAX = 1.0
"""Claim 2: rho(dF/dz) at z* below this = locally contractive, stable backprop through z*."""
MIN_DERIVATIVE_EFFECT = 0.05
"""Claim 3: a no-recall arm whose implicit derivative exceeds this breaks the construction."""
VERIFIED_MIN = 0.5
"""Claim 3: a trial's split counts when at least this share of its probes verified a fixed point."""
NONINF_MARGIN = 0.02
"""Claim 4: internal may trail standard by at most this much accuracy and still count as >=."""
MIN_RHO_EFFECT = 0.3
"""Claim 5: Spearman rho(difficulty, iterations) must be at least this (a moderate correlation)."""
MIN_INSTANCES = 10
"""Claim 5: converged instances a trial (or a split of it) needs for its rank correlation."""
OVERTHINK_MAX = 0.05
"""Claim 6: a recall arm 'does not overthink' when its overthinking share stays below this."""
CAP_BOUND_SHARE = 0.05
"""A (variant, split) cell is cap-bound when more than this share of its instances hit the cap."""
TRAINED = "trained"
"""The halting protocol of rows that carry none (the one they were trained and evaluated with)."""


@dataclass(frozen=True)
class ClaimSource:
    """A claim as its paper states it, and how this report tests it."""

    title: str
    paper: str
    quote: str
    """The sentence, verbatim from the paper's abstract (url), or a paraphrase labelled as such."""
    url: str
    estimand: str
    arms: str
    tasks: str
    rule: str
    min_effect: str


SGLT = "Labovich 2026, Stability and Generalization in Looped Transformers (arXiv 2604.15259), abstract"
SGLT_URL = "https://www.emergentmind.com/papers/2604.15259"
SOURCES: dict[int, ClaimSource] = {
    1: ClaimSource(
        "Recall beats no recall out of distribution", SGLT,
        "\"we prove that looped networks without recall have countable fixed points and cannot achieve strong "
        "input-dependence at any spectral regime [...] we train single-layer looped transformers on chess, sudoku, "
        "and prefix-sums and find that downstream performance tracks the framework's predictions\" (the OOD "
        "comparison is our reading of 'tracks the predictions')", SGLT_URL,
        "mean over seeds of OOD exact accuracy (non-cap-bound OOD splits) of the recall arm minus the no-recall arm, "
        "paired by seed: conditional on both arms learned; intention-to-treat over all seeds beside it",
        "standard or internal recall vs none, every other axis matched", "every task with both arms",
        "favoured arm >= 3 learned seeds; conditional interval clears +/-MIN_ACC_EFFECT; when no recall does not learn "
        "in distribution, its failure counts only with a learned positive control (then the intention-to-treat "
        "interval is judged)", f"recall - none >= +{MIN_ACC_EFFECT} OOD accuracy"),
    2: ClaimSource(
        "Recall + outer norm: a regime with reachable, stable fixed points", SGLT,
        "\"recall combined with outer normalization reliably produces a regime in which fixed points are "
        "simultaneously reachable, locally smooth in the input, and supported by stable backpropagation\"", SGLT_URL,
        "per spectral-regime arm: in-distribution reachability (share converged, r < tol) and measured rho(dF/dz) "
        "at z*, means over learned seeds",
        "standard or internal recall with outer norm, one part per task x recall placement (other axes matched)",
        "every task with such arms",
        "a part is supported when SOME regime (>= 3 learned seeds) clears reachability >= REACH_MIN and rho < "
        "RHO_MAX; contradicted when EVERY regime contradicts (max of their p); smoothness is shown, not gated",
        f"some regime: ID reachability >= {REACH_MIN} and rho(dF/dz) < {RHO_MAX}"),
    3: ClaimSource(
        "Without recall the fixed point has no strong input-dependence", SGLT,
        "\"looped networks without recall have countable fixed points and cannot achieve strong input-dependence "
        "at any spectral regime\"", SGLT_URL,
        "by construction: without recall dF/dx = 0, so dz*/dx = (I - J)^-1 dF/dx = 0 at any fixed point; the measured "
        "implicit derivative of no-recall arms checks the construction. Empirical part (shown, not gated): basin-jump "
        "rates vs eps and fixed-point spread of learned no-recall models; Spearman rho across learned trials of each "
        "stability axis vs OOD accuracy",
        "no-recall arms (construction); every learned trial (rank correlations)", "every task with a no-recall arm",
        "holds by construction unless a no-recall arm's measured derivative on verified fixed points exceeds "
        "MIN_DERIVATIVE_EFFECT (then contradicted: the implementation breaks the construction)",
        f"no-recall derivative <= {MIN_DERIVATIVE_EFFECT} (it must be 0)"),
    4: ClaimSource(
        "Internal recall >= standard recall on sudoku with outer norm", SGLT,
        "\"[internal recall] becomes competitive with -- and on sudoku, substantially better than -- standard recall "
        "placement once outer normalization is applied\" (tested as non-inferiority)", SGLT_URL,
        "mean over seeds of OOD exact accuracy (non-cap-bound splits), internal minus standard, paired by seed; "
        "intention-to-treat beside it",
        "internal vs standard recall, outer norm != none, other axes matched", "sudoku",
        "as claim 1, one-sided at -NONINF_MARGIN", f"internal - standard >= -{NONINF_MARGIN} OOD accuracy"),
    5: ClaimSource(
        "Iterations to converge grow with difficulty (adaptive compute)",
        "Movahedi et al. 2026, Fixed-Point Reasoners (arXiv 2606.18206), abstract",
        "\"We show that fixed-point halting allows FPRM to adapt its compute to task difficulty.\"",
        "https://arxiv.org/abs/2606.18206",
        "per variant: mean over learned trials of Spearman rho(difficulty, iterations) on converged instances; within "
        "each split where the key varies within a split (mazes: dead-end depth; sudoku: propagation depth), pooled "
        "over sizes where it does not (length-keyed tasks: between sizes only)",
        "every variant with >= 3 learned trials", "every task with per-instance iterations",
        "every variant's interval clears +MIN_RHO_EFFECT", f"Spearman rho(difficulty, iterations) >= +{MIN_RHO_EFFECT}"),
    6: ClaimSource(
        "Recall prevents overthinking", "Bansal et al. 2022, End-to-end Algorithm Synthesis with Recurrent "
        "Networks: Logical Extrapolation Without Overthinking (NeurIPS 2022), abstract",
        "\"We propose a recall architecture that keeps an explicit copy of the problem instance in memory so that it "
        "cannot be forgotten. [...] These innovations prevent the overthinking problem\" (DT's innovations are recall "
        "and progressive training; here recall is tested under the sweep's own estimator)",
        "https://proceedings.neurips.cc/paper_files/paper/2022/hash/7f70331dbe58ad59d83941dfa7d975aa-Abstract-Conference.html",
        "per recall variant: overthinking share = peak accuracy at budgets <= the training depth minus accuracy at the "
        "fixed point (floored at 0; from the stored budget curve, a lower bound on the share of instances right at "
        "some such budget and wrong at the fixed point), mean over learned seeds and non-cap-bound splits",
        "standard and internal recall (no-recall arms shown beside)", "every task with budget curves",
        "every recall variant's interval lies below OVERTHINK_MAX", f"overthinking share < {OVERTHINK_MAX}"),
    7: ClaimSource(
        "Extension (ours, not the paper's): reachable and stable in EVERY spectral regime", SGLT + " (extended)",
        "not a sentence of the paper: our universal strengthening of claim 2's 'a regime'", SGLT_URL,
        "as claim 2, per spectral-regime arm", "as claim 2", "as claim 2",
        "every regime arm supported", f"every regime: ID reachability >= {REACH_MIN} and rho < {RHO_MAX}"),
}
CLAIMS = {k: s.title for k, s in SOURCES.items()}
MIN_EFFECTS = {k: s.min_effect for k, s in SOURCES.items()}
RULE = (f"supported: every part's 95% t-interval (seed means; none below {bootstrap.MIN_SEEDS_FOR_INTERVAL} seeds) "
        f"clears its minimum effect; contradicted: some part clears it in the opposite direction after Holm over the "
        f"parts with data (one-sided t-test p, {ALPHA}); the favoured arm needs >= {MIN_LEARNED_SEEDS} learned seeds; "
        f"a disfavoured arm's failure in distribution counts only with a learned positive control")


@dataclass
class Part:
    """One piece of evidence for a claim."""

    name: str
    verdict: str
    """SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNDERTRAINED, NO_CONTROL or BY_CONSTRUCTION."""
    evidence: str
    p_against: float = math.nan
    """One-sided t-test p-value against the claim (Holm's input); NaN without data."""
    note: str = ""
    """Why inconclusive or undertrained."""


@dataclass
class Verdict:
    """A claim's verdict, the effects behind it and the rule that combined them."""

    claim_id: int
    claim: str
    verdict: str
    detail: str
    """For UNDERTRAINED: '(k/n learned ...)'; for PROTOCOL_SENSITIVE: each protocol's verdict."""
    evidence: str
    min_effect: str
    reason: str
    parts: dict[str, str] = field(default_factory=dict)
    """Verdict of each part on its own."""
    itt: str = ""
    """Intention-to-treat lines (all seeds) of the paired parts."""
    by_protocol: dict[str, str] = field(default_factory=dict)
    """Label per halting protocol (one entry when the rows carry one protocol)."""
    details: list[str] = field(default_factory=list)
    """Each part's evidence ('name: verdict: effect [interval] ...'), and the intention-to-treat lines."""

    @property
    def label(self) -> str:
        return f"{self.verdict} {self.detail}".strip()

    @property
    def source(self) -> ClaimSource:
        return SOURCES[self.claim_id]


class Recorder:
    """Collects every number the report prints, as rows of estimates.parquet."""

    COLUMNS = ("kind", "task", "variant", "split", "halting", "n_seeds", "n_learned", "estimate", "lo", "hi",
               "method", "p")

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.halting = TRAINED
        self.regime_arms = None
        """Claim 2's regime arms, handed to claim 7 (same protocol, same rows)."""

    def add(self, kind: str, task: str, variant: str, split: str, estimate: Estimate, n_learned=None,
            p: float = math.nan, n_seeds: Optional[int] = None) -> None:
        self.rows.append({"kind": kind, "task": task, "variant": variant, "split": split, "halting": self.halting,
                          "n_seeds": int(estimate.n_seeds if n_seeds is None else n_seeds),
                          "n_learned": None if n_learned is None else int(n_learned),
                          "estimate": float(estimate.effect), "lo": float(estimate.low), "hi": float(estimate.high),
                          "method": estimate.method, "p": float(p)})

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame.from_records(self.rows, columns=list(self.COLUMNS))
        return out.astype({"n_learned": "Int64"})


def decide(estimate: Estimate, support_above: float, contradict_below: float) -> tuple[str, float, str]:
    """(verdict, p_against, note) of one part whose effect the claim predicts > support_above."""
    if not estimate.has_interval:
        return INCONCLUSIVE, math.nan, f"no interval ({estimate.n_seeds} seed(s))"
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


def combine(claim_id: int, parts: list[Part], skipped: list[str], itt: list[str] | None = None) -> Verdict:
    """The claim's verdict from its parts (module rule 4)."""
    evidence = "; ".join(p.evidence for p in parts) or "-"
    no_data = f"; no data for {', '.join(skipped)}" if skipped else ""
    base = dict(claim_id=claim_id, claim=CLAIMS[claim_id], evidence=evidence, min_effect=MIN_EFFECTS[claim_id],
                parts={p.name: p.verdict for p in parts}, itt="; ".join(itt or []),
                details=[f"**{p.verdict}**" + (f" ({p.note})" if p.note and p.verdict != SUPPORTED else "")
                         + f": {p.evidence}" for p in parts] + [f"ITT: {line}" for line in itt or []])
    if not parts:
        return Verdict(verdict=INCONCLUSIVE, detail="", reason="no data for this claim"
                       + (f": {'; '.join(skipped)}" if skipped else ""), **base)
    with_data = [p for p in parts if p.verdict not in NO_DATA_VERDICTS and not math.isnan(p.p_against)]
    rejected = holm_rejections([p.p_against for p in with_data])
    broken = [p for p, r in zip(with_data, rejected) if r and p.verdict == CONTRADICTED]
    if broken:
        names = ", ".join(f"{p.name} (p={p.p_against:.2g})" for p in broken)
        return Verdict(verdict=CONTRADICTED, detail="", reason=f"contradicted in {names}, Holm over "
                       f"{len(with_data)} part(s) with data" + no_data, **base)
    if all(p.verdict == SUPPORTED for p in parts):
        return Verdict(verdict=SUPPORTED, detail="", reason=f"supported in all {len(parts)} part(s)" + no_data,
                       **base)
    lone = [p.name for p in with_data if p.verdict == CONTRADICTED]
    lone_text = (f"; {', '.join(lone)} contradict(s) alone but not after Holm over {len(with_data)} part(s)"
                 if lone else "")
    decided = [p.name for p in parts if p.verdict == SUPPORTED]
    supported_text = ((f"; supported in {', '.join(decided)}" if len(decided) <= 3 else
                       f"; supported in {len(decided)} of {len(parts)} parts") if decided else "")
    under = [p for p in parts if p.verdict == UNDERTRAINED]
    uncontrolled = [p for p in parts if p.verdict == NO_CONTROL]
    uncontrolled_text = (f"; {len(uncontrolled)} part(s) where the disfavoured arm did not learn in distribution "
                         f"and no positive control learned" if uncontrolled else "")
    if under:
        detail = _undertrained_detail(under, len(parts))
        return Verdict(verdict=UNDERTRAINED, detail=detail, reason=f"{len(under)} of {len(parts)} part(s) "
                       f"undertrained" + uncontrolled_text + supported_text + lone_text + no_data, **base)
    if uncontrolled:
        return Verdict(verdict=NO_CONTROL, detail=f"({len(uncontrolled)} of {len(parts)} parts)",
                       reason=f"the disfavoured arm did not learn in distribution and no positive control learned in "
                       f"{', '.join(p.name for p in uncontrolled)}" + supported_text + lone_text + no_data, **base)
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
    return f"{n_learned(rows)}/{n_trials(rows)} learned"


def n_learned(rows: pd.DataFrame) -> int:
    return int(rows.loc[rows["learned"].astype(bool), "trial_id"].nunique())


def n_trials(rows: pd.DataFrame) -> int:
    return int(rows["trial_id"].nunique())


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


def split_accuracy(rows: pd.DataFrame, rng=None, learned_only: bool = True) -> Estimate:
    """Exact accuracy of the (learned) trials of ``rows`` (one variant), over all its splits."""
    use = rows[rows["learned"]] if learned_only else rows
    seeds = sorted(use["seed"].dropna().unique())
    splits = sorted(use["split"].unique())
    return bootstrap.accuracy_t(*_counts(use, splits, seeds)) if seeds else EMPTY


def reachability_estimate(rows: pd.DataFrame, rng=None) -> Estimate:
    """Share of instances converged over the learned trials of one arm (counts from reachability x n)."""
    learned = rows[rows["learned"]].dropna(subset=["reachability", "n"])
    seeds = sorted(learned["seed"].dropna().unique())
    if not seeds:
        return EMPTY
    splits = sorted(learned["split"].unique())
    frame = learned.assign(exact_acc=learned["reachability"], instance_correct=None)
    return bootstrap.accuracy_t(*_counts(frame, splits, seeds))


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


def _is_grad_axis(col: str) -> bool:
    return col.startswith("cfg.grad.")


def positive_control(task_rows: pd.DataFrame, arm: pd.DataFrame) -> Optional[tuple[str, str]]:
    """(variant label, 'k/n learned') of a positive control for ``arm`` in the same task: a variant
    with the same values on every non-gradient variant axis and another value on some ``cfg.grad.*``
    axis (another estimator), with >= MIN_LEARNED_SEEDS learned seeds; None without one. Reads the
    cfg columns ``_narrow`` keeps (those that vary somewhere in the table)."""
    axes = [c for c in task_rows.columns if c.startswith("cfg.") and c not in NON_AXES
            and task_rows[c].astype(str).nunique(dropna=False) > 1]
    grad = [c for c in axes if _is_grad_axis(c)]
    if not grad:
        return None
    key = arm.iloc[0]
    same = np.ones(len(task_rows), bool)
    for col in axes:
        if not _is_grad_axis(col):
            same &= (task_rows[col].astype(str) == str(key[col])).to_numpy()
    other = np.zeros(len(task_rows), bool)
    for col in grad:
        other |= (task_rows[col].astype(str) != str(key[col])).to_numpy()
    candidates = task_rows[same & other]
    for label, rows in candidates.groupby("variant_label", sort=True):
        if n_learned(rows) >= MIN_LEARNED_SEEDS:
            return str(label), learned_text(rows)
    return None


def unbound(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows outside cap-bound cells (``analyse`` flags them ``cap_bound_cell``)."""
    return rows[~rows["cap_bound_cell"].astype(bool)] if "cap_bound_cell" in rows.columns else rows


def _ood_splits(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """OOD splits both arms have outside cap-bound cells."""
    a, b = unbound(a), unbound(b)
    return sorted(set(a.loc[is_ood(a["split"]), "split"]) & set(b.loc[is_ood(b["split"]), "split"]))


def _paired(a: pd.DataFrame, b: pd.DataFrame, splits: list[str], learned_only: bool) -> tuple[Estimate, list]:
    pick = (lambda r: r[r["learned"]]) if learned_only else (lambda r: r)
    seeds = sorted(set(pick(a)["seed"].dropna()) & set(pick(b)["seed"].dropna()))
    if not seeds or not splits:
        return EMPTY, seeds
    return bootstrap.paired_accuracy_t(*_counts(a, splits, seeds), *_counts(b, splits, seeds)), seeds


def _paired_ood_part(name: str, task: str, task_rows: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame,
                     a_name: str, b_name: str, support_above: float, contradict_below: float, kind: str,
                     rec: Recorder) -> tuple[Part, str]:
    """A part comparing OOD accuracy of the favoured arm a with b, paired by seed (module rule 3),
    and its intention-to-treat line."""
    splits = _ood_splits(a, b)
    gate = f"{a_name} {learned_text(a)}, {b_name} {learned_text(b)}"
    itt, itt_seeds = _paired(a, b, splits, learned_only=False)
    itt_p = itt.p_at_least(contradict_below)
    rec.add(f"{kind}_itt", task, name, ",".join(splits), itt, n_learned=None, p=itt_p)
    itt_line = (f"{name}: intention-to-treat {itt.text()} over {len(itt_seeds)} paired seed(s) (all, learned or not)"
                if splits else f"{name}: intention-to-treat not computed (no common OOD split outside cap-bound cells)")
    if not splits:
        return Part(name, INCONCLUSIVE, f"{name}: no common OOD split that is not cap-bound [{gate}]",
                    note="no common non-cap-bound OOD split"), itt_line
    if n_learned(a) < MIN_LEARNED_SEEDS:
        return Part(name, UNDERTRAINED, f"{name}: favoured arm below the gate [{gate}]", note=gate), itt_line
    if n_learned(b) >= MIN_LEARNED_SEEDS:
        estimate, seeds = _paired(a, b, splits, learned_only=True)
        verdict, p_against, note = decide(estimate, support_above, contradict_below)
        rec.add(kind, task, name, ",".join(splits), estimate, n_learned=len(seeds), p=p_against)
        text = f"{name}: {estimate.text()} over {len(seeds)} paired learned seed(s) [{gate}]"
        if len(seeds) < MIN_LEARNED_SEEDS:
            note = f"{len(seeds)} seed(s) learned in both arms"
            return Part(name, UNDERTRAINED, text + f" [{note}]", note=f"{gate}; {note}"), itt_line
        return Part(name, verdict, text, p_against, note), itt_line
    control = positive_control(task_rows, b)
    failed = f"{b_name} did not learn in distribution ({learned_text(b)})"
    if control is None:
        return Part(name, NO_CONTROL, f"{name}: {failed}; no positive control in this sweep (the same arm under "
                    f"another gradient estimator) learned, so the failure may be the estimator's [{gate}]",
                    note=failed), itt_line
    verdict, p_against, note = decide(itt, support_above, contradict_below)
    rec.add(f"{kind}_controlled", task, name, ",".join(splits), itt, p=p_against)
    text = (f"{name}: {failed}, which counts: positive control {control[0]} ({control[1]}); intention-to-treat "
            f"{itt.text()} over {len(itt_seeds)} paired seed(s) [{gate}]")
    return Part(name, verdict, text, p_against, note), itt_line


def claim_recall_beats_none(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    parts, skipped, itt = [], [], []
    for task, rows in frame.groupby("task_label", sort=True):
        pairs = list(_matched_pairs(rows, ("standard", "internal"), "none"))
        if not pairs:
            skipped.append(f"{task} (no matched recall / no-recall variants)")
        for context, recall, better, worse in pairs:
            name = _pair_name(task, context, recall, "none")
            part, line = _paired_ood_part(name, task, rows, better, worse, recall, "none", MIN_ACC_EFFECT,
                                          -MIN_ACC_EFFECT, "claim1", rec)
            parts.append(part)
            itt.append(line)
    return combine(1, parts, skipped, itt)


def _regime_arm(task: str, name: str, rows: pd.DataFrame, rec: Recorder) -> Part:
    """One spectral-regime arm of claims 2/7: ID reachability and measured rho over learned seeds."""
    id_rows = unbound(rows[rows["split"] == "id"])
    reach = reachability_estimate(id_rows)
    rho = bootstrap.seed_t(rows[rows["learned"]].groupby("seed")["spectral_radius"].mean().to_numpy())
    variant = rows["variant_label"].iloc[0]
    k = n_learned(rows)
    text = f"{name}: ID reachability {reach.text('.3f')}, measured rho {rho.text('.3f')} [{learned_text(rows)}]"
    if id_rows.empty:
        return Part(name, INCONCLUSIVE, f"{name}: in-distribution split cap-bound or missing", note="no ID split")
    reach_p, rho_p = reach.p_at_least(REACH_MIN), rho.p_at_most(RHO_MAX)  # against the claim, for Holm
    rec.add("reachability_id", task, variant, "id", reach, n_learned=k, p=reach_p)
    rec.add("rho", task, variant, "all", rho, n_learned=k, p=rho_p)
    if k < MIN_LEARNED_SEEDS:
        return Part(name, UNDERTRAINED, text, note=learned_text(rows))
    reach_v, reach_p, reach_note = decide(reach, REACH_MIN, REACH_MIN)
    rho_v, rho_p, rho_note = INCONCLUSIVE, math.nan, "rho not measured"
    if rho.n_seeds:
        rho_p = rho.p_at_most(RHO_MAX)  # against 'rho < RHO_MAX'
        rho_v = (SUPPORTED if rho.has_interval and rho.high < RHO_MAX else
                 CONTRADICTED if rho.has_interval and rho.low > RHO_MAX else INCONCLUSIVE)
        rho_note = "" if rho_v != INCONCLUSIVE else "interval crosses the bound"
    verdicts = (reach_v, rho_v)
    verdict = (CONTRADICTED if CONTRADICTED in verdicts else
               SUPPORTED if verdicts == (SUPPORTED, SUPPORTED) else INCONCLUSIVE)
    p_values = [p for p in (reach_p, rho_p) if not math.isnan(p)]
    p_against = min(1.0, len(p_values) * min(p_values)) if p_values else math.nan  # Bonferroni over 2 axes
    notes = "; ".join(n for n in (reach_note and f"reachability: {reach_note}", rho_note and f"rho: {rho_note}") if n)
    return Part(name, verdict, text, p_against, notes)


def _normed_arms(frame: pd.DataFrame):
    normed = frame[frame["recall"].isin(["standard", "internal"]) & frame["outer_norm"].notna()
                   & (frame["outer_norm"] != "none")]
    return normed, list(normed.groupby(["task_label", "regime", "variant_label"], sort=True))


def _arm_name(task, regime, rows, duplicate: bool) -> str:
    if duplicate:
        return f"{task}/{regime}/{rows['variant_label'].iloc[0]}"
    return f"{task}/{regime}/{rows['recall'].iloc[0]}+{rows['outer_norm'].iloc[0]}"


def _regime_parts(frame: pd.DataFrame, rec: Recorder) -> tuple[list[tuple[tuple, Part]], list[str]]:
    """((task, placement context), part) per regime arm, and what has no data."""
    normed, groups = _normed_arms(frame)
    skipped = [] if not normed.empty else ["recall != none with outer_norm != none (no such ok trials)"]
    short = [_arm_name(t, r, rows, False) for (t, r, _), rows in groups]
    out = []
    for ((task, regime, _), rows), name in zip(groups, short):
        name = _arm_name(task, regime, rows, short.count(name) > 1)
        context = rows["context_label"].iloc[0]
        placement = (task, rows["recall"].iloc[0], re.sub(r"spectral=[^,\]]*(, )?", "", str(context)).strip(", "))
        for split, cell in unbound(rows[rows["learned"]]).groupby("split"):
            rec.add("reachability", task, rows["variant_label"].iloc[0], split, reachability_estimate(cell),
                    n_learned=n_learned(rows))
        out.append((placement, _regime_arm(task, name, rows, rec)))
    return out, skipped


def claim_recall_norm_stable(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    """Claim 2, SGLT's existence statement: per task x recall placement, some regime works."""
    arms, skipped = _regime_parts(frame, rec)
    rec.regime_arms = (arms, skipped)  # claim 7 judges the same arms
    parts = []
    placements = list(dict.fromkeys(p for p, _ in arms))
    same_task = [p[0] for p in placements]
    for placement in placements:
        regimes = [part for p, part in arms if p == placement]
        task, recall, context = placement
        name = f"{task}/{recall}+outer norm" + (f" ({context})" if same_task.count(task) > 2 else "")
        ok = [r for r in regimes if r.verdict == SUPPORTED]
        text = "; ".join(r.evidence for r in regimes)
        p_values = [r.p_against for r in regimes if not math.isnan(r.p_against)]
        if ok:
            parts.append(Part(name, SUPPORTED, text + f" => regime(s) {', '.join(r.name for r in ok)} qualify",
                              p_against=max(p_values) if p_values else math.nan))
        elif regimes and all(r.verdict == CONTRADICTED for r in regimes):
            parts.append(Part(name, CONTRADICTED, text + " => no regime qualifies",
                              p_against=max(r.p_against for r in regimes)))
        elif any(r.verdict == UNDERTRAINED for r in regimes):
            notes = ", ".join(r.note for r in regimes if r.verdict == UNDERTRAINED)
            parts.append(Part(name, UNDERTRAINED, text, note=notes))
        else:
            parts.append(Part(name, INCONCLUSIVE, text, note="no regime decided"))
    return combine(2, parts, skipped)


def claim_every_regime(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    """Claim 7, our extension of claim 2: every regime arm must qualify."""
    cached = getattr(rec, "regime_arms", None)  # claim 2's arms (it records their numbers)
    arms, skipped = cached if cached is not None else _regime_parts(frame, Recorder())
    rec.regime_arms = None
    return combine(7, [part for _, part in arms], skipped)


def _derivative_by_seed(rows: pd.DataFrame, splits: list[str], learned_only: bool = True) -> pd.Series:
    """Mean implicit derivative over ``splits`` per (learned) seed."""
    use = rows[(rows["learned"] if learned_only else True) & rows["split"].isin(splits)]
    return use.groupby("seed")["input_derivative"].mean()


def _verified_splits(rows: pd.DataFrame, learned_only: bool = True) -> set[str]:
    """Splits on which every (learned) trial of the arm measured the derivative at verified fixed points."""
    use = rows[rows["learned"]] if learned_only else rows
    good = use[(use["probe_verified"] >= VERIFIED_MIN) & use["input_derivative"].notna()]
    bad = set(use["split"]) - set(good["split"])
    return set(good["split"]) - bad


STABILITY_AXES = ("reachability", "spectral_radius", "input_derivative")


def stability_vs_ood(frame: pd.DataFrame, task: str, rec: Recorder) -> str:
    """Spearman rho across the learned trials of ``task`` between each stability axis (mean over the
    trial's splits) and its mean OOD accuracy, with a Fisher-z interval."""
    learned = frame[(frame["task_label"] == task) & frame["learned"]]
    if learned.empty:
        return "no learned trial"
    per_trial = learned.assign(ood=learned["exact_acc"].where(is_ood(learned["split"]))).groupby("trial_id").agg(
        ood=("ood", "mean"), **{a: (a, "mean") for a in STABILITY_AXES})
    texts = []
    for axis in STABILITY_AXES:
        est, p = bootstrap.spearman_across(per_trial[axis], per_trial["ood"])
        rec.add("stability_vs_ood", task, axis, "ood", est, n_learned=est.n_seeds, p=p)
        texts.append(f"{axis} {est.text('+.2f')} (n={est.n_seeds} trials)")
    return "Spearman vs OOD accuracy across learned trials: " + ", ".join(texts)


def claim_no_recall_input_independent(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    parts, skipped = [], []
    for task, rows in frame.groupby("task_label", sort=True):
        none_rows = rows[rows["recall"] == "none"]
        if none_rows.empty:
            skipped.append(f"{task} (no no-recall variant)")
            continue
        correlation = stability_vs_ood(frame, task, rec)
        for variant, arm in none_rows.groupby("variant_label", sort=True):
            name = f"{task}/{variant}"
            if arm["input_derivative"].isna().all():
                parts.append(Part(name, BY_CONSTRUCTION, f"{name}: dF/dx = 0 without recall (derivative not measured: "
                                  f"a schema-1 table); {correlation}"))
                continue
            splits = sorted(_verified_splits(arm, learned_only=False))
            derivative = bootstrap.seed_t(_derivative_by_seed(arm, splits, learned_only=False).to_numpy())
            rec.add("claim3_none_derivative", task, variant, ",".join(splits), derivative, n_learned=n_learned(arm))
            learned = arm[arm["learned"]]
            jumps = [bootstrap.seed_t(learned.groupby("seed")[c].mean().to_numpy())
                     for c in ("basin_jump_1e-4", "basin_jump_1e-3", "basin_jump_1e-2", "fixed_point_spread")]
            for c, est in zip(("basin_jump_1e-4", "basin_jump_1e-3", "basin_jump_1e-2", "fixed_point_spread"), jumps):
                rec.add(f"claim3_{c}", task, variant, "all", est, n_learned=len(learned["trial_id"].unique()))
            empirical = (f"learned no-recall models ({learned_text(arm)}): basin jumps at eps 1e-4/1e-3/1e-2 "
                         + " / ".join(j.text(".2f") for j in jumps[:3]) + f", fixed-point spread {jumps[3].text('.3f')}"
                         if len(learned) else f"no learned no-recall model ({learned_text(arm)}): basin jumps and "
                         f"spread not measurable")
            text = (f"{name}: measured derivative {derivative.text('.3f')} on {len(splits)} verified split(s) "
                    f"({', '.join(splits) or 'none'}); {empirical}; {correlation}")
            if derivative.n_seeds and derivative.effect > MIN_DERIVATIVE_EFFECT:
                p = derivative.p_at_most(MIN_DERIVATIVE_EFFECT)
                parts.append(Part(name, CONTRADICTED, text + " => the construction does not hold here",
                                  p if not math.isnan(p) else 0.0))
            else:
                parts.append(Part(name, BY_CONSTRUCTION, text))
    verdict = combine(3, parts, skipped)
    if parts and all(p.verdict == BY_CONSTRUCTION for p in parts):
        verdict.verdict = BY_CONSTRUCTION
        verdict.reason = ("without recall dF/dx = 0, so the implicit derivative is 0 at any fixed point, trained or "
                          "not: not an empirical test; the empirical part (basin jumps, spread, rank correlations) is "
                          "in the evidence" + (f"; no data for {', '.join(skipped)}" if skipped else ""))
    return verdict


def claim_internal_ge_standard_sudoku(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    sudoku = frame[(frame["task"] == "sudoku") & frame["outer_norm"].notna() & (frame["outer_norm"] != "none")]
    if sudoku.empty:
        return combine(4, [], ["sudoku with outer norm (no ok sudoku trials with outer_norm != none)"])
    parts, skipped, itt = [], [], []
    for task, rows in sudoku.groupby("task_label", sort=True):
        pairs = list(_matched_pairs(rows, ("internal",), "standard"))
        if not pairs:
            skipped.append(f"{task} (no matched internal / standard variants)")
        for context, recall, better, worse in pairs:
            name = _pair_name(task, context, recall, "standard")
            part, line = _paired_ood_part(name, task, frame[frame["task_label"] == task], better, worse, "internal",
                                          "standard", -NONINF_MARGIN, -NONINF_MARGIN, "claim4", rec)
            parts.append(part)
            itt.append(line)
    return combine(4, parts, skipped, itt)


def converged_pairs(rows: pd.DataFrame, by_split: bool = False):
    """(difficulty, iterations) of the converged instances of ``rows``, pooled over rows, or a list
    of such pairs, one per row, with ``by_split``."""
    diffs, iters = [], []
    cols = ["instance_difficulty", "instance_iters", "eval_cap", "instance_converged", "instance_cycled",
            "cycled_frac"]
    for d, it, cap, conv, cyc, frac in zip(*(rows[c] for c in cols)):
        if d is None or it is None or len(d) == 0 or len(d) != len(it):
            continue
        keep = outcomes_of(it, cap, conv, cyc, frac) == CONVERGED
        diffs.append(np.asarray(d, float)[keep])
        iters.append(np.asarray(it, float)[keep])
    if by_split:
        return list(zip(diffs, iters))
    if not diffs:
        return np.empty(0), np.empty(0)
    return np.concatenate(diffs), np.concatenate(iters)


def key_varies_within_split(rows: pd.DataFrame) -> bool:
    """True when the difficulty key takes several values within some row (an instance-level key)."""
    for d in rows["instance_difficulty"]:
        if d is not None and len(d) and np.ptp(np.asarray(d, float)) > 0:
            return True
    return False


def _trial_rho(trial: pd.DataFrame, within: bool) -> float:
    """A trial's Spearman rho(difficulty, iterations) on converged instances: mean over its splits
    (each with >= MIN_INSTANCES converged, non-constant) when ``within``, else pooled over splits."""
    if within:
        rhos = [float(bootstrap.spearman_rows(d[None], it[None])[0])
                for d, it in converged_pairs(trial, by_split=True) if d.size >= MIN_INSTANCES]
        rhos = [r for r in rhos if not math.isnan(r)]
        return float(np.mean(rhos)) if rhos else math.nan
    d, it = converged_pairs(trial)
    return float(bootstrap.spearman_rows(d[None], it[None])[0]) if d.size >= MIN_INSTANCES else math.nan


def claim_iterations_grow(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    parts, skipped, gated = [], [], []
    for task, rows in frame.groupby("task_label", sort=True):
        if rows["instance_iters"].isna().all():
            skipped.append(f"{task} (no per-instance iterations)")
            continue
        key = rows["difficulty_key"].dropna()
        key_name = key.iloc[0] if len(key) else "difficulty"
        within = key_varies_within_split(rows)
        scope = "within splits" if within else "between sizes only (the key is constant within a split)"
        if key_name == "rating":
            d = np.concatenate([np.asarray(x, float) for x in rows["instance_difficulty"] if x is not None] or [[]])
            scope += f"; rating is 0 for {np.mean(d == 0):.0%} of instances (a degenerate key)" if d.size else ""
        below = []
        for variant, arm in rows.groupby("variant_label", sort=True):
            name = f"{task}/{variant} ({key_name}, {scope.split(';')[0]})"
            learned = unbound(arm[arm["learned"]])
            rhos = [_trial_rho(t, within) for _, t in learned.groupby("trial_id", sort=True)]
            estimate = bootstrap.seed_t(rhos, method="t on per-trial Spearman rho", bounds=(-1.0, 1.0))
            shares = outcome_shares(learned)
            shown = "/".join("n/a" if math.isnan(shares[o]) else f"{shares[o]:.0%}" for o in (CONVERGED, CYCLED, CAPPED))
            text = (f"{name}: rho {estimate.text()} over {estimate.n_seeds} learned trial(s) with >= {MIN_INSTANCES} "
                    f"converged instances; converged/cycled/capped {shown}")
            verdict, p_against, note = decide(estimate, MIN_RHO_EFFECT, -MIN_RHO_EFFECT)
            rec.add("claim5_rho", task, variant, "within" if within else "between", estimate,
                    n_learned=n_learned(arm), p=p_against)
            if n_learned(arm) < MIN_LEARNED_SEEDS:  # adaptive compute is a claim about trained models
                below.append(f"{variant} ({learned_text(arm)})")
            elif learned.empty:
                parts.append(Part(name, INCONCLUSIVE, f"{name}: every split cap-bound [{learned_text(arm)}]",
                                  note="every split cap-bound"))
            elif estimate.n_seeds < MIN_LEARNED_SEEDS:
                parts.append(Part(name, INCONCLUSIVE, text, note=f"{estimate.n_seeds} trial(s) with a rank correlation"))
            else:
                parts.append(Part(name, verdict, text, p_against, note))
        if below:
            skipped.append(f"{task} ({len(below)} variant(s) below the gate of {MIN_LEARNED_SEEDS} learned seeds)")
            gated.append(f"{task}, below the gate: " + "; ".join(below))
        if key_name == "rating":
            skipped.append(f"{task}: keyed by the search rating, not propagation depth (not stored in these rows)")
    verdict = combine(5, parts, skipped)
    verdict.details += gated
    return verdict


# ------------------------------------------------------------------- overthinking (claim 6)

def overthinking_share(row) -> float:
    """Peak accuracy over budgets <= the training depth minus accuracy at the fixed point (the last
    budget, i.e. exact_acc), floored at 0; NaN without a budget curve or a training depth. From the
    stored budget curve, so a lower bound on the share of instances right at some such budget and
    wrong at the fixed point."""
    iters, acc, depth = row.get("budget_iters"), row.get("budget_acc"), row.get("cfg.solver.train_cap")
    if iters is None or acc is None or len(iters) == 0 or len(iters) != len(acc):
        return math.nan
    try:
        depth = float(depth)
    except (TypeError, ValueError):
        return math.nan
    iters, acc = np.asarray(iters, float), np.asarray(acc, float)
    early = acc[iters <= depth]
    final = row.get("exact_acc")
    final = float(acc[-1]) if final is None or pd.isna(final) else float(final)
    return float(max(early.max() - final, 0.0)) if early.size else math.nan


def overthinking_by_seed(rows: pd.DataFrame) -> pd.Series:
    """Mean overthinking share per seed (``analyse`` computes each row's once, as ``overthinking``)."""
    if "overthinking" in rows.columns:
        shares = rows["overthinking"].astype(float)
    else:
        cols = [c for c in ("budget_iters", "budget_acc", "cfg.solver.train_cap", "exact_acc") if c in rows.columns]
        shares = pd.Series([overthinking_share(r) for r in rows[cols].to_dict("records")], index=rows.index,
                           dtype=float)
    return shares.groupby(rows["seed"]).mean()


def overthinking_table(frame: pd.DataFrame, rec: Recorder, bound: set | None = None) -> pd.DataFrame:
    """Per task x variant x split: overthinking share over all ok trials (intention-to-treat) and
    over learned trials, t-intervals on seed means. Cap-bound cells (``bound``: (task, variant,
    split)) stay in, flagged: their 'fixed point' is the cap."""
    records = []
    for (task, variant, split), rows in frame.groupby(["task_label", "variant_label", "split"], sort=True):
        method = "t on seed means (budget curve)"
        all_est = bootstrap.seed_t(overthinking_by_seed(rows).to_numpy(), method=method, bounds=(0.0, 1.0))
        learned = rows[rows["learned"]]
        learned_est = bootstrap.seed_t(overthinking_by_seed(learned).to_numpy(), method=method, bounds=(0.0, 1.0))
        if math.isnan(all_est.effect):
            continue
        rec.add("overthinking", task, variant, split, learned_est, n_learned=n_learned(rows), n_seeds=n_trials(rows))
        rec.add("overthinking_all", task, variant, split, all_est, n_learned=n_learned(rows))
        records.append({"task": task, "variant": variant, "split": split, "all": all_est, "learned": learned_est,
                        "n": n_trials(rows), "k": n_learned(rows),
                        "cap_bound": (task, variant, split) in (bound or set())})
    return pd.DataFrame.from_records(records, columns=["task", "variant", "split", "all", "learned", "n", "k",
                                                      "cap_bound"])


def _none_overthinking(rows: pd.DataFrame, context) -> str:
    """The matched no-recall arm's largest overthinking share over its splits (all seeds, cap-bound
    cells included: a no-recall model that never converges overthinks at the cap)."""
    none = rows[(rows["recall"] == "none") & (rows["context_label"] == context)]
    if none.empty:
        return ""
    worst = max(((split, bootstrap.seed_t(overthinking_by_seed(cell).to_numpy(), bounds=(0.0, 1.0)))
                 for split, cell in none.groupby("split")), key=lambda se: se[1].effect if se[1].n_seeds else -1)
    return f"; matched no recall (all seeds, its largest split {worst[0]}): {worst[1].text('.3f')}"


def claim_recall_prevents_overthinking(frame: pd.DataFrame, rec: Recorder) -> Verdict:
    parts, skipped, gated = [], [], []
    for task, rows in frame.groupby("task_label", sort=True):
        if overthinking_by_seed(rows).isna().all():
            skipped.append(f"{task} (no budget curve or training depth)")
            continue
        below = []
        for variant, arm in rows[rows["recall"].isin(["standard", "internal"])].groupby("variant_label", sort=True):
            name = f"{task}/{variant}"
            estimate = bootstrap.seed_t(overthinking_by_seed(unbound(arm[arm["learned"]])).to_numpy(),
                                        method="t on seed means (budget curve)", bounds=(0.0, 1.0))
            text = (f"{name}: overthinking share {estimate.text('.3f')} over learned seeds [{learned_text(arm)}]"
                    + _none_overthinking(rows, arm["context_label"].iloc[0]))
            if n_learned(arm) < MIN_LEARNED_SEEDS:  # a model that did not learn has nothing to overthink
                below.append(f"{variant} ({learned_text(arm)})")
                continue
            if unbound(arm[arm["learned"]]).empty:
                parts.append(Part(name, INCONCLUSIVE, f"{name}: every split cap-bound [{learned_text(arm)}]",
                                  note="every split cap-bound"))
                continue
            negated = Estimate(-estimate.effect, -estimate.high, -estimate.low, estimate.n_seeds,
                               method=estimate.method, values=estimate.values, se=estimate.se)
            verdict, p_against, note = decide(negated, -OVERTHINK_MAX, -OVERTHINK_MAX)
            rec.add("claim6_overthinking", task, variant, "all", estimate, n_learned=n_learned(arm), p=p_against)
            parts.append(Part(name, verdict, text, p_against, note))
        if below:
            skipped.append(f"{task} ({len(below)} recall variant(s) below the gate of {MIN_LEARNED_SEEDS} learned "
                           f"seeds)")
            gated.append(f"{task}, below the gate: " + "; ".join(below))
    verdict = combine(6, parts, skipped)
    verdict.details += gated
    return verdict


# ------------------------------------------------------------------- trainability (P(learned))

def trainability(frame: pd.DataFrame, rec: Recorder) -> list[str]:
    """P(learned) per variant (Clopper-Pearson), and per task x regime x recall group the learned
    counts with and without outer norm (Fisher's exact test)."""
    lines = []
    for (task, variant), rows in frame.groupby(["task_label", "variant_label"], sort=True):
        k, n = n_learned(rows), n_trials(rows)
        rec.add("p_learned", task, variant, "id", bootstrap.clopper_pearson(k, n), n_learned=k, n_seeds=n)
    groups = {"recall (standard+internal)": ["standard", "internal"], "none": ["none"]}
    pooled = [((task, "all regimes"), rows) for task, rows in frame.groupby("task_label", sort=True)
              if rows["regime"].nunique() > 1]
    for (task, regime), rows in list(frame.groupby(["task_label", "regime"], sort=True)) + pooled:
        for group, recalls in groups.items():
            arm = rows[rows["recall"].isin(recalls)]
            has_norm = arm["outer_norm"].fillna("none") != "none"
            normed, plain = arm[has_norm], arm[~has_norm]
            if normed.empty or plain.empty:
                continue
            (k1, n1), (k2, n2) = (n_learned(normed), n_trials(normed)), (n_learned(plain), n_trials(plain))
            p = bootstrap.fisher_two_sided(k1, n1, k2, n2)
            a, b = bootstrap.clopper_pearson(k1, n1), bootstrap.clopper_pearson(k2, n2)
            diff = Estimate(a.effect - b.effect, math.nan, math.nan, n1 + n2, method="Fisher exact (two-sided p)")
            rec.add("p_learned_outer_norm_minus_none", task, group, regime, diff, n_learned=k1 + k2, p=p)
            lines.append(f"{task}, {regime}, {group}: with outer norm {k1}/{n1} learned ({a.text('.2f')}), without "
                         f"{k2}/{n2} ({b.text('.2f')}); Fisher exact two-sided p = {p:.2g}")
    return lines


# ------------------------------------------------------------------- protocols and cap-bound cells

def row_capped_share(row) -> float:
    """Share of a row's instances at the cap (the row's ``capped_share`` when stored; else from its
    instance iterations and flags); NaN without either."""
    stored = row.get("capped_share")
    if stored is not None and not pd.isna(stored):
        return float(stored)
    iters = row.get("instance_iters")
    if iters is None or len(iters) == 0:
        return math.nan
    outcomes = outcomes_of(iters, row.get("eval_cap"), row.get("instance_converged"), row.get("instance_cycled"),
                           row.get("cycled_frac"))
    return float(np.mean(outcomes == CAPPED))


def cap_bound_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """(task, variant, split, halting, capped share, source) of every cap-bound cell, judged on its
    *learned* trials (the rows every accuracy, reachability and iteration estimate reads): their mean
    capped share (each row's ``capped_share``, else derived from its instance outcomes; its
    ``cap_bound`` flag when neither is known) above CAP_BOUND_SHARE. A cell with no learned trial
    is never left out: it only feeds intention-to-treat lines and P(learned), which do not depend on
    the cap being loose."""
    records = []
    learned = frame[frame["learned"]]
    cols = [c for c in ("capped_share", "instance_iters", "eval_cap", "instance_converged", "instance_cycled",
                        "cycled_frac") if c in learned.columns]
    learned = learned.assign(_capped=[row_capped_share(r) for r in learned[cols].to_dict("records")])
    stored = "capped_share" in frame.columns and frame["capped_share"].notna().any()
    for (task, variant, split, halting), rows in learned.groupby(["task_label", "variant_label", "split", "halting"],
                                                                  sort=True):
        shares = rows["_capped"].to_numpy(float)
        share = float(np.nanmean(shares)) if not np.isnan(shares).all() else math.nan
        source = "capped_share" if stored else "instance iterations at the cap"
        if math.isnan(share) and "cap_bound" in rows.columns and rows["cap_bound"].notna().any():
            bound, source = bool(rows["cap_bound"].fillna(False).astype(bool).any()), "cap_bound"
        else:
            bound = not math.isnan(share) and share > CAP_BOUND_SHARE
        if bound:
            records.append({"task": task, "variant": variant, "split": split, "halting": halting,
                            "capped_share": share, "n_learned": int(rows["trial_id"].nunique()), "source": source})
    return pd.DataFrame.from_records(records, columns=["task", "variant", "split", "halting", "capped_share",
                                                      "n_learned", "source"])


def with_halting(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``halting`` column ('trained' where absent or null)."""
    out = frame.copy()
    out["halting"] = out["halting"].fillna(TRAINED).astype(str) if "halting" in out.columns else TRAINED
    return out


CLAIM_FUNCTIONS: dict[int, Callable[[pd.DataFrame, Recorder], Verdict]] = {
    1: claim_recall_beats_none, 2: claim_recall_norm_stable, 3: claim_no_recall_input_independent,
    4: claim_internal_ge_standard_sudoku, 5: claim_iterations_grow, 6: claim_recall_prevents_overthinking,
    7: claim_every_regime}


@dataclass
class Analysis:
    """Everything the report prints about the claims: verdicts (combined over protocols), each
    protocol's verdicts, the cap-bound cells left out, trainability lines, overthinking per
    variant and split, and the estimates."""

    verdicts: list[Verdict]
    per_protocol: dict[str, list[Verdict]]
    cap_bound: pd.DataFrame
    trainability: list[str]
    overthinking: pd.DataFrame
    estimates: pd.DataFrame


def _narrow(frame: pd.DataFrame) -> pd.DataFrame:
    """The claim columns, every cfg column that varies (variant axes, for positive controls) and
    each row's overthinking share (computed once here)."""
    cfg = [c for c in frame.columns if c.startswith("cfg.") and c not in CLAIM_COLUMNS
           and frame[c].astype(str).nunique(dropna=False) > 1]
    out = frame.loc[:, [c for c in CLAIM_COLUMNS if c in frame.columns] + cfg]
    cols = [c for c in ("budget_iters", "budget_acc", "cfg.solver.train_cap", "exact_acc") if c in frame.columns]
    return out.assign(overthinking=[overthinking_share(r) for r in frame[cols].to_dict("records")])


def analyse(df: pd.DataFrame, min_id_acc: float | None = None, gate: float | None = None) -> Analysis:
    """Verdicts, per protocol and combined, from a results table (raw or prepared). ``gate``: the
    competence gate a prepared table was prepared with (for each protocol's own competence)."""
    frame = df if "variant_label" in df.columns and min_id_acc is None else prepare(df, min_id_acc)
    gate = min_id_acc if min_id_acc is not None else gate
    frame = with_halting(frame[frame["status_ok"]])
    rec = Recorder()
    per_protocol, train_lines, over = {}, [], []
    if frame["halting"].nunique() > 1:  # competence is the training's: read under the trials' own halting
        frame = trained_competence(frame, gate if gate is not None else _gate_of(frame))
    bound = cap_bound_cells(frame)
    groups = list(frame.groupby("halting", sort=True)) or [(TRAINED, frame)]  # no ok row: every claim says so
    for halting, sub in groups:
        rec.halting = str(halting)
        cells = bound[bound["halting"] == halting]
        drop = set(zip(cells["task"], cells["variant"], cells["split"]))
        use = _narrow(sub).assign(cap_bound_cell=[(t, v, sp) in drop for t, v, sp in
                                                  zip(sub["task_label"], sub["variant_label"], sub["split"])])
        per_protocol[str(halting)] = [fn(use, rec) for fn in CLAIM_FUNCTIONS.values()]
        train_lines += [(f"[{halting}] " if frame["halting"].nunique() > 1 else "") + line
                        for line in trainability(use, rec)]
        over.append(overthinking_table(use, rec, drop).assign(halting=str(halting)))
    verdicts = combine_protocols(per_protocol)
    over_table = pd.concat(over, ignore_index=True) if over else pd.DataFrame()
    return Analysis(verdicts, per_protocol, bound, train_lines, over_table, rec.frame())


def trained_competence(frame: pd.DataFrame, gate: float) -> pd.DataFrame:
    """``learned`` on every row from the trial's in-distribution accuracy under its own halting
    ('trained'; the best over protocols where a trial has no such row), so every protocol compares
    the same learned models."""
    out = frame.copy()
    id_rows = out[out["split"] == "id"]
    own = id_rows[id_rows["halting"] == TRAINED].groupby("trial_id")["exact_acc"].max()
    best = id_rows.groupby("trial_id")["exact_acc"].max()
    id_acc = own.reindex(best.index).fillna(best)
    out["id_acc_trial"] = out["trial_id"].map(id_acc).astype(float)
    out["learned"] = out["status_ok"] & (out["id_acc_trial"] >= gate)
    return out


def _gate_of(frame: pd.DataFrame) -> float:
    from orchestrator.report.frame import MIN_ID_ACC
    return MIN_ID_ACC


def combine_protocols(per_protocol: dict[str, list[Verdict]]) -> list[Verdict]:
    """One verdict per claim: the protocol's when there is one, the common one when all agree,
    else PROTOCOL_SENSITIVE with each protocol's verdict. Protocols agree when their verdicts do
    ('inconclusive: undertrained' under each, whatever the learned counts in its detail); the
    combined detail then lists each protocol's own."""
    names = list(per_protocol)
    if not names:
        return []
    out = []
    for i, first in enumerate(per_protocol[names[0]]):
        mine = {h: per_protocol[h][i] for h in names}
        labels = {h: v.label for h, v in mine.items()}
        first.by_protocol = labels
        if len(names) == 1:
            out.append(first)
            continue

        def joined(field: str, skip_empty: bool = False) -> str:
            return " || ".join(f"[{h}] {getattr(v, field)}" for h, v in mine.items()
                               if getattr(v, field) or not skip_empty)
        details = [f"[{h}] {d}" for h, v in mine.items() for d in v.details]
        if len(set(labels.values())) == 1:  # one verdict, but every protocol's parts (they differ in what they read)
            first.reason = joined("reason") + f" (the same verdict under halting protocols {', '.join(names)})"
            first.details, first.itt, first.evidence = details, joined("itt", skip_empty=True), joined("evidence")
            out.append(first)
            continue
        verdicts = {v.verdict for v in mine.values()}
        common = verdicts.pop() if len(verdicts) == 1 else None
        if common:  # each protocol's detail in brackets: a detail has semicolons of its own
            both = "; ".join(f"{h} [{v.detail.strip('()') or '-'}]" for h, v in mine.items())
        else:
            both = "; ".join(f"{h}: {label}" for h, label in labels.items())
        out.append(Verdict(first.claim_id, first.claim, common or PROTOCOL_SENSITIVE, f"({both})",
                           joined("evidence"), first.min_effect, joined("reason"), first.parts, joined("itt"),
                           labels, details))
    return out


def compute_verdicts(df: pd.DataFrame, min_id_acc: float | None = None) -> list[Verdict]:
    """Verdicts on claims 1-7 from a results table (raw, as read from Parquet, or prepared)."""
    return analyse(df, min_id_acc).verdicts


CLAIM_COLUMNS = ("trial_id", "task", "task_label", "variant_label", "context_label", "recall", "outer_norm",
                 "regime", "seed", "split", "size", "n", "exact_acc", "instance_correct", "learned", "status_ok",
                 "reachability", "spectral_radius", "input_derivative", "probe_verified", "basin_jump_1e-4",
                 "basin_jump_1e-3", "basin_jump_1e-2", "fixed_point_spread", "instance_iters", "instance_difficulty",
                 "eval_cap", "instance_converged", "instance_cycled", "cycled_frac", "difficulty_key", "budget_iters",
                 "budget_acc", "halting", "capped_share", "cap_bound", "id_acc_trial", "cap_bound_cell")
"""The columns the claims read, plus every cfg column (a narrow copy keeps row selections cheap)."""
