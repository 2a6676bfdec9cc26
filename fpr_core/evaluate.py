"""Evaluation of one split: verifier-based accuracy, iterations per instance, stability diagnostics.

``EvalResult.metrics`` uses the column names of ``orchestrator/store/schema.py`` so a row is the metrics
plus provenance. Evaluation runs in float32 (no autocast) because the halting rule compares a
relative residual with ``tol`` and the diagnostics take finite differences; bf16 rounding (~4e-3)
would blur both.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fpr_core.config import CAP_EXPONENTS, EvalConfig, SolverConfig, resolve_cap_law
from fpr_core.diagnostics import PROBE_KEYS, eval_mode, probe_loop, reachability
from fpr_core.tasks.base import Task, TaskData

METRIC_KEYS = ("n", "exact_acc", "token_acc", "iters_mean", "iters_p50", "iters_p95", "reachability",
               "cycled_frac", "residual_median", *PROBE_KEYS, "eval_seconds", "eval_cap", "capped_share")
"""Keys of EvalResult.metrics (each a column of the results table)."""

CAP_BOUND_SHARE = 0.05
"""A split is *cap-bound* when more than this share of its instances ended at the loop cap
(neither converged nor cycled nor stalled): its accuracy and reachability then measure the cap,
not the model, and it decides no claim while a protocol exists under which it is not cap-bound
(DESIGN.md, 'Judging a claim'; docs/halting.md)."""


def capped_mask(iterations, converged, cycled, cap: int) -> np.ndarray:
    """(N,) bool: the instance ended at the cap: it used all ``cap`` steps without converging
    (r < tol) or being halted as cycled. An instance converging on the cap's last step is converged;
    one halted by the step-size floor (eta < min_eta) below the cap is stalled, not capped."""
    iterations = np.asarray(iterations, dtype=np.float64)
    return (iterations >= cap) & ~np.asarray(converged, dtype=bool) & ~np.asarray(cycled, dtype=bool)


def is_cap_bound(capped_share: float) -> bool:
    """More than CAP_BOUND_SHARE of the split's instances ended at the cap."""
    return bool(capped_share > CAP_BOUND_SHARE)

BUDGET_POINTS = 12
"""Points of the test-time compute curve: budgets log-spaced from 1 to the cap (duplicates merged)."""


@dataclass
class EvalResult:
    """Metrics of one eval split and the per-instance arrays behind them."""

    metrics: dict[str, float]
    """Flat metrics, keys METRIC_KEYS (probe metrics are nan when diagnostics are off)."""
    instance_iters: np.ndarray
    """(N,) float32 loop iterations each instance used."""
    instance_difficulty: np.ndarray
    """(N,) float32 data.meta[task.difficulty_key]."""
    instance_correct: np.ndarray
    """(N,) bool verifier verdict per instance."""
    residual_curve: np.ndarray
    """(steps,) float32 mean residual at each loop step, averaged over the batches still iterating."""
    instance_converged: np.ndarray
    """(N,) bool: the solver's residual fell below tol (a capped or cycled instance is not converged)."""
    instance_cycled: np.ndarray
    """(N,) bool: halted on a period-2 cycle."""
    budget_iters: np.ndarray
    """(K,) int64 loop budgets of the test-time compute curve, log-spaced, the last = the cap."""
    budget_acc: np.ndarray
    """(K,) float64 exact accuracy read out after each budget (Deep Thinking's accuracy per
    test-time iteration); at the cap it is the split's exact accuracy."""


def scaled_eval_cap(solver: SolverConfig, size: int, train_size: int, task_law: str = "linear") -> int:
    """Eval loop cap for instances of ``size``.

    Rule: ``eval_cap`` at or below the training size; above it ``ceil(eval_cap * (size /
    train_size)^p)`` with p from the cap law (``solver.eval_cap_law``, or ``task_law`` when that
    is 'task'): 1 for linear (a prefix k times longer needs about k times more steps), 2 for
    quadratic (maze dead-end filling: mean depth 12 / 162 / 446 steps at sides 9 / 33 / 59, about
    side^1.9; DESIGN.md), 0 for fixed. The cap never shrinks below eval_cap.
    """
    p = CAP_EXPONENTS[resolve_cap_law(solver, task_law)]
    if p == 0 or size <= train_size or train_size <= 0:
        return solver.eval_cap
    return int(math.ceil(solver.eval_cap * (size / train_size) ** p))


def _difficulty(task: Task, data: TaskData) -> np.ndarray:
    if task.difficulty_key not in data.meta:
        raise KeyError(f"task {task.name!r}: difficulty_key {task.difficulty_key!r} missing from "
                       f"data.meta (has {sorted(data.meta)})")
    return np.asarray(data.meta[task.difficulty_key], dtype=np.float32)


def _mean_curve(curves: list[torch.Tensor]) -> np.ndarray:
    """Average residual curves of different lengths step by step over the curves that reach it."""
    length = max((c.numel() for c in curves), default=0)
    padded = np.full((len(curves), length), np.nan, dtype=np.float64)
    for i, c in enumerate(curves):
        padded[i, :c.numel()] = c.detach().float().cpu().numpy()
    with np.errstate(invalid="ignore"):
        return np.nanmean(padded, axis=0).astype(np.float32) if length else np.zeros(0, np.float32)


def compute_budgets(cap: int, points: int = BUDGET_POINTS) -> np.ndarray:
    """(K,) int64 log-spaced loop budgets 1 .. cap (K <= points, the last is always ``cap``)."""
    return np.unique(np.round(np.geomspace(1, max(int(cap), 1), points)).astype(np.int64))


@torch.no_grad()
def _run_batches(model: nn.Module, task: Task, data: TaskData, cap: int, batch_size: int, device,
                 budgets: np.ndarray):
    """Solve every instance at ``cap`` and read out at each budget.

    Returns predictions (N, *shape) numpy at the cap, the token accuracy, traces (N, 4), the mean
    residual curve and predictions per budget (K, N, *shape). Every solve of a batch starts from
    the same z0. A budget at or above every iteration count of the batch reproduces the full solve
    (halting never looks at the cap), so only smaller budgets are solved again.
    """
    preds, traces, curves, per_budget = [], [], [], []
    token_hits, token_total = 0, 0
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        inputs = torch.as_tensor(data.inputs[start:stop], device=device)
        targets = torch.as_tensor(data.targets[start:stop], device=device)
        mask = torch.as_tensor(data.mask[start:stop], device=device)
        z0 = model.loop_map(inputs).z0
        out = model(inputs, cap=cap, z0=z0)
        pred = task.decode(out.logits.float())  # (b, *shape)
        token_hits += int(((pred == targets) & mask).sum())
        token_total += int(mask.sum())
        preds.append(pred.cpu().numpy())
        t = out.trace
        traces.append(torch.stack([t.iterations.float(), t.residual.float(),
                                   t.converged.float(), t.cycled.float()], 1).cpu())  # (b, 4)
        curves.append(t.residual_curve)
        used = int(t.iterations.max())
        per_budget.append(np.stack([preds[-1] if b >= used else
                                    task.decode(model(inputs, cap=int(b), z0=z0).logits.float()).cpu().numpy()
                                    for b in budgets]))  # (K, b, *shape)
    token_acc = token_hits / token_total if token_total else float("nan")
    return (np.concatenate(preds), token_acc, torch.cat(traces), _mean_curve(curves),
            np.concatenate(per_budget, axis=1))


def held_out_exact(model: nn.Module, task: Task, data: TaskData, *, cap: int, batch_size: int, device) -> float:
    """Exact accuracy of ``model`` on ``data`` at ``cap`` (a plain solve, no diagnostics): the score
    of ``train.select_every``. The global RNG (random z0) is forked, so scoring never changes what
    training draws next."""
    hits = 0
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []), \
            torch.no_grad(), eval_mode(model):
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            inputs = torch.as_tensor(data.inputs[start:stop], device=device)
            targets = torch.as_tensor(data.targets[start:stop], device=device)
            mask = torch.as_tensor(data.mask[start:stop], device=device)
            pred = task.decode(model(inputs, cap=cap).logits.float())
            hits += int(((pred == targets) | ~mask).flatten(1).all(1).sum())
    return hits / max(1, len(data))


def probe_subset(n: int, diag_n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of min(diag_n, n) of the split's n instances."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(diag_n, n), replace=False))


def evaluate_split(model: nn.Module, task: Task, data: TaskData, *, cap: int, cfg: EvalConfig,
                   device, seed: int = 0, curve: bool = True) -> EvalResult:
    """Evaluate ``model`` on every instance of ``data`` with loop cap ``cap``.

    Exact accuracy comes from ``task.verify`` on ``task.decode(logits)``; token accuracy counts
    masked positions. Reachability comes from the solver traces of the whole split; the loop probes
    (implicit input-derivative, basin jumps, spread, path independence, spectral radius) run on a
    random subset of ``cfg.diag_n`` instances drawn with ``seed`` when ``cfg.diagnostics``;
    ``seed`` also seeds the probes' random directions. The test-time compute curve reads every
    instance out at each of ``compute_budgets(cap)``; with ``curve=False`` at the cap alone (one
    point, no solve repeated).
    """
    started = time.perf_counter()
    device = torch.device(device)
    budgets = compute_budgets(cap) if curve else np.array([int(cap)], dtype=np.int64)
    with eval_mode(model):
        preds, token_acc, traces, curve, budget_preds = _run_batches(model, task, data, cap, cfg.batch_size,
                                                                     device, budgets)
        probes = dict.fromkeys(PROBE_KEYS, float("nan"))
        if cfg.diagnostics:
            subset = torch.as_tensor(data.inputs[probe_subset(len(data), cfg.diag_n, seed)], device=device)
            probes = probe_loop(model, subset, cap=cap, power_iters=cfg.power_iters, seed=seed)
    correct = np.asarray(task.verify(data, preds), dtype=bool)
    budget_acc = np.array([float(np.mean(task.verify(data, p))) for p in budget_preds], dtype=np.float64)
    iters = traces[:, 0].numpy()
    metrics = {"n": len(data), "exact_acc": float(correct.mean()), "token_acc": float(token_acc),
               "iters_mean": float(iters.mean())}
    metrics.update(reachability(traces[:, 0], traces[:, 1], traces[:, 2] > 0.5, traces[:, 3] > 0.5))
    metrics.update(probes)
    metrics["eval_cap"] = int(cap)
    converged, cycled = traces[:, 2].numpy() > 0.5, traces[:, 3].numpy() > 0.5
    metrics["capped_share"] = float(capped_mask(iters, converged, cycled, cap).mean()) if len(iters) else float("nan")
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics = {k: metrics[k] for k in METRIC_KEYS}
    return EvalResult(metrics, iters.astype(np.float32), _difficulty(task, data), correct, curve,
                      converged, cycled, budgets, budget_acc)
