"""Intervals and tests for the report (the rules: docs/statistics.md).

The report's intervals are **t-intervals on seed means** (``seed_t``, ``accuracy_t``,
``paired_accuracy_t``): each seed (trained model) contributes one number, their mean is the
estimate, and its interval is mean +- t(0.975, S-1) * SE over S seeds. The seed is the unit of
replication, and the spread of seed means already contains each seed's instance noise. For
accuracies the SE has a floor, the binomial SE of the seeds' instance counts (with (k+1/2)/(n+1)
for k/n, so 0/n and n/n still carry noise): three seeds that all score 1.000 do not give a
zero-width interval. Fewer than ``MIN_SEEDS_FOR_INTERVAL`` seeds give no interval, only the values.
One-sided p-values (Holm's inputs) come from the same t statistic. P(learned) gets a
Clopper-Pearson interval, two arms' learned counts Fisher's exact test, a rank correlation across
trials Fisher's z with the Fieller-Hartley-Pearson variance 1.06/(n - 3).

Why not the percentile bootstrap any more: over 2, 3, 5 and 10 seeds its nominal 95% interval
covers the true mean far less often than 95% (AUDIT.md sec. 3; the measured table is in
``results/ood_generalization_cpu_previous/verdicts_old_vs_new.md``), and a bootstrap p of 0 only says every
seed lies on one side. The hierarchical percentile bootstrap stays below (``accuracy``,
``paired_accuracy_difference``) for that comparison; the report no longer uses it. It resamples
seeds, then instances within a seed (Davison & Hinkley 1997, sec. 3.8, "two-stage sampling"):

1. per trial, ``INSTANCE_REPLICATES`` replicates of its statistic under instance resampling. For an accuracy
   (k correct of n) a resample of the instances is exactly Binomial(n, k/n)/n, so it is drawn
   directly; for a rank correlation the instance level is Fisher's z with the Fieller, Hartley &
   Pearson (1957) variance 1.06/(n - 3) for Spearman's rho (no per-replicate ranking, so it scales);
2. per replicate, the seeds are drawn with replacement and each drawn seed contributes one of its
   own instance replicates, picked at random (independent across draws, as a fresh instance
   resample would be).

Paired differences (two arms trained with the same seeds) draw the *same* seeds for both arms and
independent instance replicates for each. Everything is vectorised over replicates (numpy), so a
report on 10^4 trials spends its time reading Parquet, not here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta, fisher_exact, norm, rankdata
from scipy.stats import t as student_t

N_BOOT = 2000
"""Replicates per interval."""
LEVEL = 0.95
"""Two-sided coverage of every interval."""
INSTANCE_REPLICATES = 200
"""Instance-level replicates per seed; each hierarchical replicate picks one of them at random per
drawn seed (enough to carry a seed's instance noise; keeps 10^4 trials to seconds)."""
BOOT_SEED = 20260412
"""Seed of the report's generator: the same table always gives the same intervals."""
MIN_SEEDS_FOR_INTERVAL = 3
"""Below this many seeds (or trials) no interval is shown: the values and n are printed instead."""


@dataclass(frozen=True)
class Estimate:
    """A statistic over seeds (or trials) with its 95% interval."""

    effect: float
    """Point estimate (mean over seeds of each seed's statistic)."""
    low: float
    high: float
    """95% interval; NaN when there is none (fewer than MIN_SEEDS_FOR_INTERVAL seeds)."""
    n_seeds: int
    replicates: np.ndarray = field(default_factory=lambda: np.empty(0))
    """(N_BOOT,) bootstrap replicates (percentile-bootstrap estimates only; empty otherwise)."""
    method: str = "percentile bootstrap"
    values: tuple = ()
    """The per-seed values behind the estimate (printed when there is no interval)."""
    se: float = math.nan
    """Standard error of the t-interval (NaN for other methods)."""

    @property
    def df(self) -> int:
        return max(self.n_seeds - 1, 1)

    def p_at_most(self, value: float) -> float:
        """One-sided p-value for 'effect > value' (t-test on the seed means; bootstrap tail mass for
        a percentile estimate); NaN without an interval."""
        if not math.isnan(self.se):
            return _t_tail(self.effect - value, self.se, self.df, self.n_seeds)
        return float(np.mean(self.replicates <= value)) if self.replicates.size else math.nan

    def p_at_least(self, value: float) -> float:
        """One-sided p-value for 'effect < value' (see p_at_most)."""
        if not math.isnan(self.se):
            return _t_tail(value - self.effect, self.se, self.df, self.n_seeds)
        return float(np.mean(self.replicates >= value)) if self.replicates.size else math.nan

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def text(self, fmt: str = "+.3f") -> str:
        """'0.62 [0.55, 0.69]' rounded to the interval's precision; without an interval the mean and
        the values with n ('0.977 (n=2: 1.000, 0.953; no interval)')."""
        if math.isnan(self.effect):
            return "n/a"
        sign = "+" if fmt.startswith("+") else ""
        if not self.has_interval:
            vals = ", ".join(f"{v:{sign}.3f}" for v in self.values)
            return f"{self.effect:{sign}.3f} (n={self.n_seeds}{': ' + vals if vals else ''}; no interval)"
        d = decimals_for(self.high - self.low)
        return f"{self.effect:{sign}.{d}f} [{self.low:{sign}.{d}f}, {self.high:{sign}.{d}f}]"


def decimals_for(width: float) -> int:
    """Decimals that show an interval of this width to about two significant digits of its
    half-width (0.26 -> 2, 0.04 -> 3), at least 2, at most 4."""
    half = width / 2
    if not half > 0 or not math.isfinite(half):
        return 3
    return int(min(4, max(2, 1 - math.floor(math.log10(half)))))


def _t_tail(distance: float, se: float, df: int, n: int) -> float:
    """P(T_df >= distance / se): one-sided p for 'effect beyond the bound' given its distance."""
    if n < MIN_SEEDS_FOR_INTERVAL:
        return math.nan
    if se <= 0:
        return 0.0 if distance > 0 else 1.0
    return float(student_t.sf(distance / se, df))


EMPTY = Estimate(math.nan, math.nan, math.nan, 0, np.empty(0))


def make_rng() -> np.random.Generator:
    return np.random.default_rng(BOOT_SEED)


def accuracy_replicates(correct: np.ndarray, total: np.ndarray, rng: np.random.Generator,
                        n_boot: int = INSTANCE_REPLICATES) -> np.ndarray:
    """(S, n_boot) instance-resampled accuracy per seed, averaged over the seed's splits.

    correct, total: (S, K) correct counts and instance counts of S seeds on K splits (total 0 =
    split missing, left out of that seed's average)."""
    correct, total = np.asarray(correct, float), np.asarray(total, float)
    p = np.divide(correct, total, out=np.zeros_like(correct), where=total > 0)
    draws = rng.binomial(total.astype(np.int64)[:, :, None], p[:, :, None],
                         size=(*total.shape, n_boot)) / np.maximum(total, 1)[:, :, None]  # (S, K, B)
    present = (total > 0)[:, :, None]
    return (draws * present).sum(1) / np.maximum(present.sum(1), 1)


def resample_seeds(per_seed: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot,) hierarchical replicates from (S, R) per-seed instance replicates: seeds drawn with
    replacement, each draw taking a random one of that seed's R replicates."""
    s, r = per_seed.shape
    seeds = rng.integers(0, s, size=(n_boot, s))
    picks = rng.integers(0, r, size=(n_boot, s))
    return per_seed[seeds, picks].mean(1)


def paired_resample(first: np.ndarray, second: np.ndarray, rng: np.random.Generator,
                    n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot,) replicates of mean(first - second) over seeds paired by row: the same seeds drawn
    for both arms, independent instance replicates for each. first, second (S, R)."""
    s, r = first.shape
    seeds = rng.integers(0, s, size=(n_boot, s))
    one, two = rng.integers(0, r, size=(n_boot, s)), rng.integers(0, r, size=(n_boot, s))
    return (first[seeds, one] - second[seeds, two]).mean(1)


def summarise(point: float, replicates: np.ndarray, n_seeds: int) -> Estimate:
    reps = replicates[np.isfinite(replicates)]
    if not reps.size or math.isnan(point):
        return Estimate(point, math.nan, math.nan, n_seeds, reps)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return Estimate(float(point), float(low), float(high), n_seeds, reps)


def accuracy(correct: np.ndarray, total: np.ndarray, rng: np.random.Generator) -> Estimate:
    """Mean accuracy over S seeds with its interval; correct, total (S, K) as in accuracy_replicates."""
    correct, total = np.atleast_2d(correct), np.atleast_2d(total)
    if total.size == 0 or not (total > 0).any():
        return EMPTY
    per_seed = accuracy_replicates(correct, total, rng)
    point = float(np.mean(_seed_accuracy(correct, total)))
    return summarise(point, resample_seeds(per_seed, rng), total.shape[0])


def _seed_accuracy(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(S,) each seed's accuracy averaged over its present splits."""
    present = total > 0
    acc = np.divide(correct, total, out=np.zeros(total.shape), where=present)
    return (acc * present).sum(1) / np.maximum(present.sum(1), 1)


def paired_accuracy_difference(correct_a, total_a, correct_b, total_b, rng) -> Estimate:
    """Mean over paired seeds of accuracy(a) - accuracy(b); arrays (S, K), row s = seed s in both."""
    correct_a, total_a = np.atleast_2d(correct_a), np.atleast_2d(total_a)
    correct_b, total_b = np.atleast_2d(correct_b), np.atleast_2d(total_b)
    if total_a.shape[0] == 0:
        return EMPTY
    point = float(np.mean(_seed_accuracy(correct_a, total_a) - _seed_accuracy(correct_b, total_b)))
    reps = paired_resample(accuracy_replicates(correct_a, total_a, rng),
                           accuracy_replicates(correct_b, total_b, rng), rng)
    return summarise(point, reps, total_a.shape[0])


def seed_level(values: np.ndarray, rng: np.random.Generator) -> Estimate:
    """Mean of one number per seed (no instance level stored, e.g. a median spectral radius)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not values.size:
        return EMPTY
    reps = values[rng.integers(0, values.size, size=(N_BOOT, values.size))].mean(1)
    return summarise(float(values.mean()), reps, values.size)


def paired_seed_level(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> Estimate:
    """Mean over paired seeds of first - second (one number per seed and arm)."""
    diff = np.asarray(first, float) - np.asarray(second, float)
    return seed_level(diff, rng)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation of (R, n) arrays (average ranks for ties); NaN for a constant row."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    denom = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(-1) / np.where(denom > 0, denom, 1), np.nan)


def spearman_replicates(rho: float, n: int, rng: np.random.Generator,
                        n_boot: int = INSTANCE_REPLICATES) -> np.ndarray:
    """(n_boot,) instance-level replicates of a Spearman rho from n instances: Fisher's z with the
    Fieller-Hartley-Pearson variance 1.06/(n - 3), mapped back by tanh."""
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    return np.tanh(z + rng.normal(0.0, math.sqrt(1.06 / max(n - 3, 1)), size=n_boot))


def correlation(per_seed_pairs: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> Estimate:
    """Mean over seeds (trials) of Spearman rho(x, y) on each seed's instances, with its interval."""
    points, reps = [], []
    for x, y in per_seed_pairs:
        rho = float(spearman_rows(np.asarray(x, float)[None], np.asarray(y, float)[None])[0])
        if math.isnan(rho):
            continue
        points.append(rho)
        reps.append(spearman_replicates(rho, len(x), rng))
    if not points:
        return EMPTY
    return summarise(float(np.mean(points)), resample_seeds(np.stack(reps), rng), len(points))


# ----------------------------------------------------------------- t-intervals on seed means (the report's)

def seed_t(values, floor_var: float = 0.0, method: str = "t on seed means",
           bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """Mean of one number per seed with its 95% t-interval; SE = sqrt(max(s^2, floor_var) / S).
    floor_var: a per-seed variance the spread cannot be below (the instance noise of accuracies).
    No interval (values only) below MIN_SEEDS_FOR_INTERVAL seeds."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    n = values.size
    if not n:
        return EMPTY
    mean = float(values.mean())
    shown = tuple(float(v) for v in values)
    if n < MIN_SEEDS_FOR_INTERVAL:
        return Estimate(mean, math.nan, math.nan, n, method=f"{method} (n<{MIN_SEEDS_FOR_INTERVAL}: no interval)",
                        values=shown)
    se = math.sqrt(max(float(values.var(ddof=1)), floor_var) / n)
    half = float(student_t.ppf(0.5 + LEVEL / 2, n - 1)) * se  # clipped to the statistic's range
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return Estimate(mean, low, high, n, method=method, values=shown, se=se)


def _binomial_var(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(S,) instance variance of each seed's accuracy averaged over its present splits, with
    (k + 1/2)/(n + 1) for k/n so that 0/n and n/n keep some noise."""
    present = total > 0
    p = np.divide(correct + 0.5, total + 1.0, out=np.full(total.shape, 0.5), where=present)
    var = np.divide(p * (1 - p), total, out=np.zeros(total.shape), where=present)
    k = np.maximum(present.sum(1), 1)
    return var.sum(1) / k ** 2


def accuracy_t(correct: np.ndarray, total: np.ndarray) -> Estimate:
    """Mean accuracy over S seeds with its t-interval; correct, total (S, K) as in
    accuracy_replicates (each seed's accuracy is its mean over its present splits)."""
    correct, total = np.atleast_2d(np.asarray(correct, float)), np.atleast_2d(np.asarray(total, float))
    keep = (total > 0).any(1)
    if not keep.any():
        return EMPTY
    correct, total = correct[keep], total[keep]
    floor = float(np.mean(_binomial_var(correct, total)))
    return seed_t(_seed_accuracy(correct, total), floor, "t on seed means (binomial SE floor)", (0.0, 1.0))


def paired_accuracy_t(correct_a, total_a, correct_b, total_b) -> Estimate:
    """Mean over paired seeds of accuracy(a) - accuracy(b) with its t-interval; arrays (S, K), row s
    = seed s in both arms."""
    ca, ta = np.atleast_2d(np.asarray(correct_a, float)), np.atleast_2d(np.asarray(total_a, float))
    cb, tb = np.atleast_2d(np.asarray(correct_b, float)), np.atleast_2d(np.asarray(total_b, float))
    keep = (ta > 0).any(1) & (tb > 0).any(1)
    if not keep.any():
        return EMPTY
    ca, ta, cb, tb = ca[keep], ta[keep], cb[keep], tb[keep]
    floor = float(np.mean(_binomial_var(ca, ta) + _binomial_var(cb, tb)))
    return seed_t(_seed_accuracy(ca, ta) - _seed_accuracy(cb, tb), floor,
                  "paired t on seed differences (binomial SE floor)", (-1.0, 1.0))


def clopper_pearson(k: int, n: int) -> Estimate:
    """k of n with its exact (Clopper-Pearson) 95% interval; n_seeds = n."""
    if n <= 0:
        return EMPTY
    tail = (1 - LEVEL) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return Estimate(k / n, low, high, n, method="Clopper-Pearson")


def fisher_two_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of Fisher's exact test on the 2x2 table (k1 of n1 vs k2 of n2)."""
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided")[1])


def spearman_across(x, y) -> tuple[Estimate, float]:
    """Spearman rho across trials (one (x, y) per trial) with a Fisher-z 95% interval (variance
    1.06/(n-3), Fieller, Hartley & Pearson 1957), and its two-sided p (z test of rho = 0). No
    interval below 4 trials or for a constant axis."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2:
        return EMPTY, math.nan
    rho = float(spearman_rows(x[None], y[None])[0])
    if math.isnan(rho):
        return EMPTY, math.nan
    if n < 4:
        return Estimate(rho, math.nan, math.nan, n, method="Spearman (n<4: no interval)"), math.nan
    z, sd = math.atanh(min(max(rho, -0.999999), 0.999999)), math.sqrt(1.06 / (n - 3))
    q = float(norm.ppf(0.5 + LEVEL / 2))
    p = float(2 * norm.sf(abs(z) / sd))
    return Estimate(rho, math.tanh(z - q * sd), math.tanh(z + q * sd), n, method="Spearman, Fisher z"), p


def simulate_coverage(n_seeds: int, sims: int, rng: np.random.Generator, seed_sd: float = 0.08,
                      n_inst: int = 256, true_mean: float = 0.6) -> tuple[float, float]:
    """(t-interval coverage, percentile-bootstrap coverage) of ``true_mean`` over ``sims`` simulated
    sweeps: ``n_seeds`` seeds whose true accuracies scatter N(true_mean, seed_sd) (clipped to
    [0, 1]), each scored on ``n_inst`` Binomial instances. The check behind the report's choice of
    interval (tests/test_statistics.py; the table in results/ood_generalization_cpu/
    verdicts_old_vs_new.md)."""
    t_hits = boot_hits = 0
    total = np.full((n_seeds, 1), n_inst)
    for _ in range(sims):
        p = np.clip(true_mean + rng.normal(0.0, seed_sd, n_seeds), 0.0, 1.0)  # (S,) each seed's accuracy
        correct = rng.binomial(n_inst, p)[:, None]
        est = accuracy_t(correct, total)
        t_hits += bool(est.low <= true_mean <= est.high)
        perc = accuracy(correct, total, rng)
        boot_hits += bool(perc.low <= true_mean <= perc.high)
    return t_hits / sims, boot_hits / sims
