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

Not every estimator can train every loop: ``input_gradient_refusal`` says when the input embedding
would get no gradient at all (an autonomous loop under an estimator that detaches its start), and
the sweep's edge refuses such a trial (DESIGN.md, 'Judging a claim').
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from fpr_core.config import ConfigError, ExperimentConfig, GradConfig, ModelConfig, SolverConfig
from fpr_core.registry import Registry
from fpr_core.solver import RESIDUALS, LoopTrace, solve

GRAD_MODES: Registry = Registry("grad.mode")
IMPLICIT_TOL = 1e-5
"""Stop the implicit backward iteration when ||g_{i+1} - g_i|| / ||g_{i+1}|| falls below this."""


_DETACHED_WHY = {
    "truncated": "'truncated' solves without grad and then takes k steps with grad from the detached state",
    "phantom": "'phantom' solves without grad and then takes k damped steps with grad from the detached fixed point",
    "implicit": "'implicit' differentiates z* = F(z*; x) through dF/dx, which is 0 for a loop that never reads x, "
                "and the solve's start is detached",
    "progressive": "'progressive' with alpha = 1 keeps only Deep Thinking's term run from a detached state "
                   "(the full run from z0, weighted 1 - alpha, is dropped)",
}


def grad_text(grad: GradConfig) -> str:
    """The estimator as a spec writes it: 'bptt', 'truncated:8', 'progressive (alpha 1.0)'."""
    if grad.mode in ("truncated", "phantom"):
        return f"{grad.mode}:{grad.k}"
    if grad.mode == "progressive":
        return f"progressive (alpha {grad.alpha})"
    return grad.mode


def input_gradient_refusal(model: ModelConfig, grad: GradConfig) -> Optional[str]:
    """Why the input embedding gets exactly zero gradient under this estimator, or None when it gets one.

    The rule: x reaches the loss through the loop map wherever it is injected (standard recall in
    every form, internal recall), and then every estimator carries a gradient to it. Without recall
    the loop is autonomous and x enters only through z0 = x, so only an estimator that
    differentiates the path from z0 reaches it: bptt, and the progressive loss while its full run
    from z0 counts (alpha < 1). Truncated, phantom and implicit gradients, and progressive with
    alpha = 1, start their graph at a detached state: the embedding's gradient is 0 and the arm
    cannot learn its input (AUDIT.md 1.1, measured in tests/test_input_gradient.py)."""
    if model.recall != "none":
        return None
    if grad.mode == "bptt" or (grad.mode == "progressive" and grad.alpha < 1.0):
        return None
    return (f"under grad {grad_text(grad)} its input embedding gets no gradient, so it cannot learn its input. "
            f"Without recall x enters the loop only through z0 = x, and {_DETACHED_WHY[grad.mode]}. "
            "What would train it: `grad: bptt` (the full unroll from z0), or Deep Thinking's progressive loss "
            "with its full run (`grad: {mode: progressive, alpha: 0.5}`, any alpha < 1); give the arms it is "
            "compared with the same estimator.")


def check_input_gradient(cfg: ExperimentConfig) -> None:
    """Raise ConfigError when the trial's input embedding would get no gradient (``input_gradient_refusal``)."""
    why = input_gradient_refusal(cfg.model, cfg.grad)
    if why is not None:
        raise ConfigError(f"model.recall 'none' is refused: {why}")


def run_loop(lm, z0: torch.Tensor, solver_cfg: SolverConfig, grad_cfg: GradConfig, cap: int, *,
             training: bool) -> tuple[torch.Tensor, LoopTrace]:
    """Solve the loop of LoopMap ``lm`` from z0 (B, T, d); in training, gradients follow grad_cfg.mode."""
    if not training:
        return solve(lm.f_subset, z0, solver_cfg, cap, train=False)
    return GRAD_MODES.get(grad_cfg.mode)(lm, z0, solver_cfg, grad_cfg, cap)


def _no_grad_solve(lm, z0, solver_cfg, cap):
    with torch.no_grad():
        z, trace = solve(lm.f_subset, z0, solver_cfg, cap, train=True, with_residual=lm.step_with_residual_subset())
    return z.detach(), trace


@GRAD_MODES.register("bptt")
@GRAD_MODES.register("progressive")
def bptt(lm, z0, solver_cfg, grad_cfg, cap):
    """Full unroll with grad (the solver is differentiable, per-sample halting included)."""
    return solve(lm.f_subset, z0, solver_cfg, cap, train=True, with_residual=lm.step_with_residual_subset())


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
