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

from fpr_core.config import EvalConfig, SolverConfig
from fpr_core.diagnostics import eval_mode, probe_loop, reachability
from fpr_core.tasks.base import Task, TaskData

METRIC_KEYS = ("n", "exact_acc", "token_acc", "iters_mean", "iters_p50", "iters_p95", "reachability",
               "cycled_frac", "residual_median", "input_dependence", "fixed_point_spread",
               "path_independence", "spectral_radius", "eval_seconds", "eval_cap")
"""Keys of EvalResult.metrics (each a column of the results table)."""

PROBE_KEYS = ("input_dependence", "fixed_point_spread", "path_independence", "spectral_radius")


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


def scaled_eval_cap(solver: SolverConfig, size: int, train_size: int) -> int:
    """Eval loop cap for instances of ``size``.

    Rule: ``eval_cap`` at or below the training size; above it, with ``solver.eval_cap_scale``,
    ``ceil(eval_cap * size / train_size)`` (the loop cap grows linearly with the size knob: a
    path or a prefix that is k times longer needs about k times more steps; DESIGN.md, mazes).
    The cap never shrinks below eval_cap.
    """
    if not solver.eval_cap_scale or size <= train_size or train_size <= 0:
        return solver.eval_cap
    return int(math.ceil(solver.eval_cap * size / train_size))


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


@torch.no_grad()
def _run_batches(model: nn.Module, task: Task, data: TaskData, cap: int, batch_size: int, device):
    """Solve every instance; returns predictions (N, *shape) numpy, token counts and traces."""
    preds, traces, curves = [], [], []
    token_hits, token_total = 0, 0
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        inputs = torch.as_tensor(data.inputs[start:stop], device=device)
        targets = torch.as_tensor(data.targets[start:stop], device=device)
        mask = torch.as_tensor(data.mask[start:stop], device=device)
        out = model(inputs, cap=cap)
        pred = task.decode(out.logits.float())  # (b, *shape)
        token_hits += int(((pred == targets) & mask).sum())
        token_total += int(mask.sum())
        preds.append(pred.cpu().numpy())
        t = out.trace
        traces.append(torch.stack([t.iterations.float(), t.residual.float(),
                                   t.converged.float(), t.cycled.float()], 1).cpu())  # (b, 4)
        curves.append(t.residual_curve)
    token_acc = token_hits / token_total if token_total else float("nan")
    return np.concatenate(preds), token_acc, torch.cat(traces), _mean_curve(curves)


def evaluate_split(model: nn.Module, task: Task, data: TaskData, *, cap: int, cfg: EvalConfig,
                   device, seed: int = 0) -> EvalResult:
    """Evaluate ``model`` on every instance of ``data`` with loop cap ``cap``.

    Exact accuracy comes from ``task.verify`` on ``task.decode(logits)``; token accuracy counts
    masked positions. Reachability comes from the solver traces of the whole split; the loop probes
    (input dependence, spread, path independence, spectral radius) run on the first
    ``cfg.diag_n`` instances when ``cfg.diagnostics``. ``seed`` seeds the probes' random directions.
    """
    started = time.perf_counter()
    device = torch.device(device)
    with eval_mode(model):
        preds, token_acc, traces, curve = _run_batches(model, task, data, cap, cfg.batch_size, device)
        probes = dict.fromkeys(PROBE_KEYS, float("nan"))
        if cfg.diagnostics:
            subset = torch.as_tensor(data.inputs[:cfg.diag_n], device=device)
            probes = probe_loop(model, subset, cap=cap, power_iters=cfg.power_iters, seed=seed)
    correct = np.asarray(task.verify(data, preds), dtype=bool)
    iters = traces[:, 0].numpy()
    metrics = {"n": len(data), "exact_acc": float(correct.mean()), "token_acc": float(token_acc),
               "iters_mean": float(iters.mean())}
    metrics.update(reachability(traces[:, 0], traces[:, 1], traces[:, 2] > 0.5, traces[:, 3] > 0.5))
    metrics.update(probes)
    metrics["eval_cap"] = int(cap)
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics = {k: metrics[k] for k in METRIC_KEYS}
    return EvalResult(metrics, iters.astype(np.float32), _difficulty(task, data), correct, curve)
