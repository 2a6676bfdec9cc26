"""Hierarchical bootstrap intervals for the report: resample seeds, then instances within a seed.

Two levels of noise stand between a sweep and a claim: which seeds were trained (the training
noise) and which instances were drawn for evaluation (the test-set noise). Each interval here
resamples both, in that order (Davison & Hinkley 1997, sec. 3.8, "two-stage sampling"):

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
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

N_BOOT = 2000
"""Replicates per interval."""
LEVEL = 0.95
"""Two-sided coverage of every interval (percentile method)."""
INSTANCE_REPLICATES = 200
"""Instance-level replicates per seed; each hierarchical replicate picks one of them at random per
drawn seed (enough to carry a seed's instance noise; keeps 10^4 trials to seconds)."""
BOOT_SEED = 20260412
"""Seed of the report's generator: the same table always gives the same intervals."""


@dataclass(frozen=True)
class Estimate:
    """A statistic with its hierarchical-bootstrap interval and one-sided tail masses."""

    effect: float
    """Point estimate (mean over seeds of each seed's statistic)."""
    low: float
    high: float
    """95% percentile interval."""
    n_seeds: int
    replicates: np.ndarray
    """(N_BOOT,) bootstrap replicates of the statistic (NaN-free), for tail probabilities."""

    def p_at_most(self, value: float) -> float:
        """Bootstrap mass at or below ``value`` (a one-sided p-value for 'effect > value')."""
        return float(np.mean(self.replicates <= value)) if self.replicates.size else math.nan

    def p_at_least(self, value: float) -> float:
        """Bootstrap mass at or above ``value`` (a one-sided p-value for 'effect < value')."""
        return float(np.mean(self.replicates >= value)) if self.replicates.size else math.nan

    def text(self, fmt: str = "+.3f") -> str:
        if math.isnan(self.effect):
            return "n/a"
        return f"{self.effect:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


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
