"""Fixed-point solvers with per-sample halting (FPRM's damped iteration; Anderson acceleration).

Interface (one signature for every solver, picked by ``SolverConfig.name`` from ``SOLVERS``)::

    z_star, trace = solve(f, z0, cfg, cap, train=True|False)

``f(z_active, idx_active) -> F(z_active)``: z_active (A, T, d) holds the rows ``idx_active`` (A,)
long of the batch; f must return F on exactly those samples (``LoopMap.f_subset`` does this by
indexing the embedding x with idx). With ``cfg.per_sample`` converged samples leave the active
batch, so F is never computed on finished samples and compute follows difficulty; with
``per_sample=False`` every sample is updated until the slowest one halts (FPRM's batch halting).

Per step on the active rows: the residual r per sample (``SolverConfig.residual``: FPRM's per-token
``max_t ||z_t - F(z)_t||_inf / ||F(z)_t||_inf``, or the global ``max|z - F(z)| / max|F(z)|``); then the update (damped:
``z <- eta*F(z) + (1-eta)*z`` with a per-sample eta); if r has not improved for ``patience`` steps
and r >= tol, ``eta <- gamma*eta`` (gamma = decay_train or decay_eval). A sample halts when
r < tol (converged), eta < min_eta, or a period-2 cycle is seen (the same residual rule between
z_{t+1} and z_{t-1} < tol while r >= tol: flagged ``cycled``, Knutson et al. 2026), or at the cap.
The solver is autograd-agnostic: with grad enabled the unroll is differentiable (BPTT), under
``torch.no_grad`` it keeps no graph. Halting statistics are always computed without grad.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fpr_core.config import SolverConfig
from fpr_core.registry import Registry

SubsetMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepWithResidual = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SOLVERS: Registry = Registry("solver.name")
_TINY = 1e-12


@dataclass
class LoopTrace:
    """Per-sample halting record of one solve; every tensor lives on the model's device."""

    iterations: torch.Tensor
    """(B,) long: evaluations of F applied to each sample."""
    residual: torch.Tensor
    """(B,) float: the last residual r measured for each sample (inf if never measured)."""
    converged: torch.Tensor
    """(B,) bool: r < tol at the sample's last step."""
    cycled: torch.Tensor
    """(B,) bool: a period-2 cycle was detected for the sample."""
    residual_curve: torch.Tensor
    """(T_steps,) float: mean residual over the samples active at each step (for plots)."""

    def add_steps(self, k: int) -> "LoopTrace":
        """The same trace with k more F evaluations per sample (steps taken after the solve)."""
        return LoopTrace(self.iterations + k, self.residual, self.converged, self.cycled,
                         self.residual_curve)


RESIDUALS: Registry = Registry("solver.residual")


@RESIDUALS.register("per_token")
def residual(z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """(A,) FPRM's relative residual: per token ``||z_t - F(z)_t||_inf / ||F(z)_t||_inf``, then the
    max over tokens (FPRM's FixedPointOptimizer.step; eps 1e-8 there, a clamp here)."""
    num = (z - fz).abs().amax(-1)             # (A, T)
    den = fz.abs().amax(-1).clamp_min(_TINY)  # (A, T)
    return (num / den).flatten(1).amax(1)


@RESIDUALS.register("global")
def global_residual(z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """(A,) ``max|z - F(z)| / max|F(z)|`` over the whole sample (this project's first form)."""
    num = (z - fz).abs().flatten(1).amax(1)
    den = fz.abs().flatten(1).amax(1)
    return num / den.clamp_min(_TINY)


@SOLVERS.register("damped")
class DampedIteration:
    """``z <- eta*F(z) + (1-eta)*z`` with per-sample eta (eta = 1: plain iteration)."""

    def __init__(self, cfg: SolverConfig, z0: torch.Tensor) -> None:
        pass

    def update(self, z, fz, eta):  # z, fz (A, T, d); eta (A,)
        e = eta.view(-1, 1, 1).to(z.dtype)
        return e * fz + (1.0 - e) * z

    def keep(self, rows: torch.Tensor) -> None:
        """The active batch shrank to ``rows`` (bool mask over the previous active rows)."""


@SOLVERS.register("anderson")
class Anderson:
    """Anderson acceleration with history m: mix the last n<=m (z, F(z)) pairs with weights alpha,
    sum(alpha) = 1, minimising ||sum alpha_i (F_i - z_i)||; then damp by eta:
    ``z <- eta*sum alpha F_i + (1-eta)*sum alpha z_i``. alpha is solved without grad; the mix keeps
    the graph of the history, so BPTT through Anderson works. The history holds the active rows
    only and shrinks with them."""

    LAM = 1e-6  # ridge on the normal equations, relative to their mean diagonal

    def __init__(self, cfg: SolverConfig, z0: torch.Tensor) -> None:
        self.m = cfg.anderson_m
        self.zs: list[torch.Tensor] = []  # each (A, T, d)
        self.fs: list[torch.Tensor] = []

    def update(self, z, fz, eta):
        self.zs = (self.zs + [z])[-self.m:]
        self.fs = (self.fs + [fz])[-self.m:]
        zs, fs = torch.stack(self.zs, 1), torch.stack(self.fs, 1)  # (A, n, T, d)
        alpha = self._weights((fs - zs).detach()).to(z.dtype)      # (A, n)
        mix_f = torch.einsum("an,an...->a...", alpha, fs)
        mix_z = torch.einsum("an,an...->a...", alpha, zs)
        e = eta.view(-1, 1, 1).to(z.dtype)
        return e * mix_f + (1.0 - e) * mix_z

    def keep(self, rows: torch.Tensor) -> None:
        self.zs = [h[rows] for h in self.zs]
        self.fs = [h[rows] for h in self.fs]

    def _weights(self, g: torch.Tensor) -> torch.Tensor:  # g (A, n, T, d) -> alpha (A, n)
        g = g.flatten(2).double()
        gram = g @ g.transpose(1, 2)                                     # (A, n, n)
        n = gram.shape[-1]
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(_TINY)  # (A,)
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
        gram = gram + self.LAM * scale.view(-1, 1, 1) * eye
        ones = torch.ones(gram.shape[0], n, 1, dtype=gram.dtype, device=gram.device)
        w = torch.linalg.solve(gram, ones).squeeze(-1)                  # (A, n)
        return w / w.sum(-1, keepdim=True)


class _HaltState:
    """Per-sample solver bookkeeping of the active rows: (A,) tensors on the device of z0 that shrink
    with the active set, like z itself, so a step never gathers or scatters by row index; a sample's
    record is written to the (B,) outputs once, when it leaves (or when the solve ends)."""

    def __init__(self, b: int, cfg: SolverConfig, device) -> None:
        self.eta = torch.full((b,), float(cfg.eta), device=device)
        self.best = torch.full((b,), float("inf"), device=device)
        self.stall = torch.zeros(b, dtype=torch.long, device=device)
        self.residual = torch.full((b,), float("inf"), device=device)
        self.cycled = torch.zeros(b, dtype=torch.bool, device=device)
        self.halted = torch.zeros(b, dtype=torch.bool, device=device)
        self.out_iterations = torch.zeros(b, dtype=torch.long, device=device)
        self.out_residual = self.residual.clone()
        self.out_cycled = self.cycled.clone()

    def record(self, r, cyc, cfg: SolverConfig, gamma: float) -> torch.Tensor:
        """Update the active rows after one step with residual r (A,) and cycle flags cyc (A,);
        returns where eta decayed (A,) bool."""
        improved = r < self.best
        self.best = torch.minimum(self.best, r)
        stall = torch.where(improved, 0, self.stall + 1)
        decay = (stall >= cfg.patience) & (r >= cfg.tol)
        self.eta = torch.where(decay, self.eta * gamma, self.eta)
        self.stall = torch.where(decay, 0, stall)
        self.residual = r
        self.cycled = self.cycled | cyc
        self.halted = self.halted | (r < cfg.tol) | cyc | (self.eta < cfg.min_eta)
        return decay

    def leave(self, idx: torch.Tensor, rows: Optional[torch.Tensor], steps: int) -> None:
        """Write the record of the active rows ``rows`` (bool over them; None = all), batch rows
        ``idx[rows]``, after ``steps`` steps, to the outputs; keep the other rows active."""
        gone = idx if rows is None else idx[rows]
        self.out_iterations[gone] = steps
        self.out_residual[gone] = self.residual if rows is None else self.residual[rows]
        self.out_cycled[gone] = self.cycled if rows is None else self.cycled[rows]
        if rows is not None:
            keep = ~rows
            for name in ("eta", "best", "stall", "residual", "cycled", "halted"):
                setattr(self, name, getattr(self, name)[keep])

    def trace(self, tol: float, curve: list[torch.Tensor], like: torch.Tensor) -> LoopTrace:
        residual_curve = torch.stack(curve) if curve else like.new_zeros(0, dtype=torch.float32)
        return LoopTrace(self.out_iterations, self.out_residual, self.out_residual < tol, self.out_cycled,
                         residual_curve)


def solve(f: SubsetMap, z0: torch.Tensor, cfg: SolverConfig, cap: int, *, train: bool,
          with_residual: Optional[StepWithResidual] = None) -> tuple[torch.Tensor, LoopTrace]:
    """Iterate z <- update(z, F(z)) from z0 (B, T, d) for at most ``cap`` steps; see module doc.

    with_residual(z_active, idx_active) -> (F(z), r): F and the residual r (A,) of ``cfg.residual`` in
    one call, used instead of f when given (a compiled loop step computes both in one graph).

    Returns z_star (B, T, d) (after the last applied update of each sample) and its LoopTrace.
    The active rows are kept compact (A, T, d); a halted sample's state is written to the output
    once, when it leaves, so per-step cost follows the number of active samples only. The same
    ``idx`` tensor object is passed to f until the active set changes (f may cache by identity).

    One host sync per step (did a sample halt, did an eta decay). While every eta is still 1 the
    damped update is z <- F(z) itself (1*F + 0*z, the same values and gradients) and is skipped.
    """
    b = z0.shape[0]
    rule = SOLVERS.get(cfg.name)(cfg, z0)
    state = _HaltState(b, cfg, z0.device)
    gamma = cfg.decay_train if train else cfg.decay_eval
    measure = RESIDUALS.get(cfg.residual)
    plain = cfg.eta == 1.0 and isinstance(rule, DampedIteration)  # no eta has decayed yet
    idx = torch.arange(b, device=z0.device)  # (A,) rows of the active samples
    z_out, z, prev = z0, z0, None            # prev: (A, T, d) detached state one step back
    curve: list[torch.Tensor] = []
    steps = 0
    for steps in range(1, cap + 1):
        if idx.numel() == 0:
            break
        fz, r = with_residual(z, idx) if with_residual is not None else (f(z, idx), None)
        z_new = fz if plain else rule.update(z, fz, state.eta)
        with torch.no_grad():
            r = (measure(z, fz) if r is None else r).float()
            cyc = torch.zeros_like(r, dtype=torch.bool)
            if cfg.detect_cycles and prev is not None:
                # the residual rule between z_{t-1} and z_{t+1}: 0 on a period-2 cycle
                cyc = (measure(prev, z_new) < cfg.tol) & (r >= cfg.tol)
            decayed = state.record(r, cyc, cfg, gamma)
            curve.append(r.mean())
            prev = z.detach() if cfg.detect_cycles else None
            done = state.halted
            any_done, any_decayed = torch.stack([done.all() if not cfg.per_sample else done.any(),
                                                 decayed.any()]).tolist()
        z = z_new
        plain = plain and not any_decayed
        if not cfg.per_sample:
            if any_done:
                break
            continue
        if any_done:
            z_out = z_out.index_copy(0, idx[done], z[done])
            state.leave(idx, done, steps)
            keep = ~done
            idx, z = idx[keep], z[keep]
            prev = prev[keep] if prev is not None else None
            rule.keep(keep)
    if idx.numel() > 0:
        state.leave(idx, None, steps)
    if idx.numel() == b:
        z_out = z
    elif idx.numel() > 0:
        z_out = z_out.index_copy(0, idx, z)
    return z_out, state.trace(cfg.tol, curve, z0)
