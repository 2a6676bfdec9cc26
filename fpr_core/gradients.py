"""Gradient modes through the loop (DESIGN.md, 'Gradient modes'), picked by ``GradConfig.mode``.

Every mode has one signature, ``mode(lm, z0, solver_cfg, grad_cfg, cap) -> (z, trace)``, and runs in
training only (evaluation is a plain solve). Step budget: ``cap`` bounds the F evaluations of one
forward; modes that finish with k steps with grad spend at most ``cap - k`` in the no-grad solve.

- ``bptt``: the solver unrolled with grad; memory grows with the iterations (baseline).
- ``truncated``: no-grad solve, then k plain steps ``z <- F(z)`` with grad (FPRM/TRM/HRM).
- ``phantom``: no-grad solve, then k damped steps ``z <- l*F(z) + (1-l)*z``, l = phantom_eta, from
  the detached z* (phantom gradient, Geng et al.; k = 1 is the one-step gradient).
- ``implicit``: no-grad solve, one F step with grad, and a backward hook that replaces the incoming
  gradient by the solution of ``g = J^T g + dL/dz*`` (J = dF/dz at z*), found by fixed-point
  iteration on vector-Jacobian products, at most implicit_iters steps (DEQ, Bai et al.).
- ``progressive``: the model's forward is the full unroll (bptt); the objective in
  ``fpr_core.train`` adds Deep Thinking's progressive term (``grad.progressive``).

``unroll`` runs a fixed number of plain steps without halting (Deep Thinking's T). The training
objective (deep-supervision segments, progressive loss) lives in ``fpr_core.train``.
"""
from __future__ import annotations

from typing import Callable

import torch

from fpr_core.config import GradConfig, SolverConfig
from fpr_core.registry import Registry
from fpr_core.solver import RESIDUALS, LoopTrace, solve

GRAD_MODES: Registry = Registry("grad.mode")
IMPLICIT_TOL = 1e-5
"""Stop the implicit backward iteration when ||g_{i+1} - g_i|| / ||g_{i+1}|| falls below this."""


def run_loop(lm, z0: torch.Tensor, solver_cfg: SolverConfig, grad_cfg: GradConfig, cap: int, *,
             training: bool) -> tuple[torch.Tensor, LoopTrace]:
    """Solve the loop of LoopMap ``lm`` from z0 (B, T, d); in training, gradients follow grad_cfg.mode."""
    if not training:
        return solve(lm.f_subset, z0, solver_cfg, cap, train=False)
    return GRAD_MODES.get(grad_cfg.mode)(lm, z0, solver_cfg, grad_cfg, cap)


def _no_grad_solve(lm, z0, solver_cfg, cap):
    with torch.no_grad():
        z, trace = solve(lm.f_subset, z0, solver_cfg, cap, train=True, measured=lm.measured_subset())
    return z.detach(), trace


@GRAD_MODES.register("bptt")
@GRAD_MODES.register("progressive")
def bptt(lm, z0, solver_cfg, grad_cfg, cap):
    """Full unroll with grad (the solver is differentiable, per-sample halting included)."""
    return solve(lm.f_subset, z0, solver_cfg, cap, train=True, measured=lm.measured_subset())


@GRAD_MODES.register("truncated")
def truncated(lm, z0, solver_cfg, grad_cfg, cap):
    """No-grad solve for at most cap - k steps, then k plain steps with grad."""
    z, trace = _no_grad_solve(lm, z0, solver_cfg, max(cap - grad_cfg.k, 0))
    for _ in range(grad_cfg.k):
        z = lm.f(z)
    return z, trace.add_steps(grad_cfg.k)


@GRAD_MODES.register("phantom")
def phantom(lm, z0, solver_cfg, grad_cfg, cap):
    """No-grad solve for at most cap - k steps, then k damped steps with grad from the detached z*."""
    z, trace = _no_grad_solve(lm, z0, solver_cfg, max(cap - grad_cfg.k, 0))
    lam = grad_cfg.phantom_eta
    for _ in range(grad_cfg.k):
        z = lam * lm.f(z) + (1.0 - lam) * z
    return z, trace.add_steps(grad_cfg.k)


@GRAD_MODES.register("implicit")
def implicit(lm, z0, solver_cfg, grad_cfg, cap):
    """No-grad solve, one F step with grad, and an IFT backward hook (see module doc).

    The VJPs use a second graph f0 = F(z0_leaf) rather than the graph being backpropagated
    (re-entering the running graph from its own hook deadlocks the autograd engine), as in DEQ.
    """
    z_star, trace = _no_grad_solve(lm, z0, solver_cfg, max(cap - 1, 0))
    fz = lm.f(z_star)  # (B, T, d): graph to the parameters and x, not to z_star
    if fz.requires_grad:
        z_leaf = z_star.clone().requires_grad_()
        f0 = lm.f(z_leaf)  # (B, T, d): graph for J^T g
        fz.register_hook(_implicit_backward(f0, z_leaf, grad_cfg.implicit_iters))
    return fz, trace.add_steps(1)


def _implicit_backward(f0: torch.Tensor, z_leaf: torch.Tensor, iters: int) -> Callable:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        g = grad
        for _ in range(iters):
            jtg = torch.autograd.grad(f0, z_leaf, g, retain_graph=True)[0]  # J^T g
            g_next = jtg + grad
            change = (g_next - g).norm() / g_next.norm().clamp_min(1e-30)
            g = g_next
            if change < IMPLICIT_TOL:
                break
        return g
    return hook


def unroll(lm, z0: torch.Tensor, steps: int, solver_cfg: SolverConfig) -> tuple[torch.Tensor, LoopTrace]:
    """``steps`` plain steps z <- F(z) from z0 (B, T, d), no halting (Deep Thinking's fixed T),
    differentiable when grad is on; the trace records every sample at ``steps`` iterations with the
    residual (``solver.residual``) of its last step."""
    measure = RESIDUALS.get(solver_cfg.residual)
    z, curve = z0, []
    r = torch.full((z0.shape[0],), float("inf"), device=z0.device)
    for _ in range(steps):
        fz = lm.f(z)
        with torch.no_grad():
            r = measure(z, fz).float()
            curve.append(r.mean())
        z = fz
    iterations = torch.full((z0.shape[0],), steps, dtype=torch.long, device=z0.device)
    residual_curve = torch.stack(curve) if curve else z0.new_zeros(0, dtype=torch.float32)
    return z, LoopTrace(iterations, r, r < solver_cfg.tol, torch.zeros_like(r, dtype=torch.bool), residual_curve)
