"""The three stability axes of a looped model (SGLT; DESIGN.md, 'Stability diagnostics').

- Reachability (from the solver's traces of a whole split): converged fraction, iteration
  quantiles, median final residual, cycled fraction.
- Input-dependence, at a *verified* fixed point z* (the solver's own state, residual r < tol):
  the implicit derivative ``dz*/dx . v = (I - J)^-1 (dF/dx) v`` for a random unit direction v of the
  input embedding, by Jacobian-vector products and a batched GMRES solve; reported as the median
  norm over instances. Without recall dF/dx = 0, so it is exactly 0: SGLT's "countably many fixed
  points" makes z*(x) piecewise constant, and a finite difference then measures *basin jumps*,
  reported apart as the share of instances whose fixed point moves, beyond the derivative's linear
  prediction, under a perturbation of eps*||x|| (eps in ``JUMP_EPSILONS``). Plus the spread of z*
  over distinct inputs and path independence (z* reached from a random start).
- Geometry: the spectral radius of J = dF/dz at the solver's z*, by power iteration on
  Jacobian-vector products (``torch.func.jvp``); on the probe subset of every split, and on every
  verified fixed point of the in-distribution split (``fixed_point_radius``: the regime the trained
  model is in, whatever its spectral label).

Every probe uses the solver that evaluation uses (its tol, halting and cap), so "fixed point" means
one thing throughout; instances the solver did not verify (capped, cycled) are left out of the
derivative, jump and radius medians and counted in ``probe_verified``.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fpr_core.solver import solve

JUMP_EPSILONS = (1e-4, 1e-3, 1e-2)
"""Relative input perturbations ||delta|| = eps*||x|| for the basin-jump fractions."""
JUMP_KEYS = tuple(f"basin_jump_{eps:.0e}".replace("e-0", "e-") for eps in JUMP_EPSILONS)
"""('basin_jump_1e-4', 'basin_jump_1e-3', 'basin_jump_1e-2')."""
JUMP_TOL_FACTOR = 10.0
"""A fixed point jumped when it moved beyond the linear prediction by more than this times the
solver's tol (relative inf-norm): each solve stops within about tol/(1 - rho) of its exact fixed
point, so two solves of one smooth branch can differ by a few tol without any jump."""
GMRES_ITERS = 40
"""Krylov dimension of the linear solve (I - J) u = w (one JVP each)."""
GMRES_TOL = 1e-4
"""Relative residual ||w - (I - J) u|| / ||w|| below which the linear solve counts as solved;
instances above it get NaN (left out of the median) rather than an unsolved derivative."""

LoopFn = Callable[[torch.Tensor], torch.Tensor]
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SPECTRAL_RADIUS = "spectral_radius"
"""Metric key of rho(dF/dz) at z* (the probes' median; on the 'id' split, ``fixed_point_radius``)."""
PROBE_KEYS = ("input_derivative", *JUMP_KEYS, "fixed_point_spread", "path_independence",
              SPECTRAL_RADIUS, "probe_n", "probe_verified")
DIAGNOSTIC_KEYS = ("reachability", "iters_p50", "iters_p95", "residual_median", "cycled_frac", *PROBE_KEYS)
_TINY = 1e-30


def _per_sample_norm(z: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) Euclidean norm of each sample."""
    return z.flatten(1).norm(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ...) broadcastable against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / _per_sample(_per_sample_norm(v).clamp_min(_TINY), v)


def reachability(iterations, residual, converged, cycled) -> dict[str, float]:
    """Reachability axis from per-sample solver statistics (each (N,), tensors or arrays)."""
    iters = np.asarray(torch.as_tensor(iterations).cpu(), dtype=np.float64)
    return {"reachability": float(np.mean(np.asarray(torch.as_tensor(converged).cpu(), dtype=bool))),
            "iters_p50": float(np.percentile(iters, 50)),
            "iters_p95": float(np.percentile(iters, 95)),
            "residual_median": float(np.median(np.asarray(torch.as_tensor(residual).float().cpu()))),
            "cycled_frac": float(np.mean(np.asarray(torch.as_tensor(cycled).cpu(), dtype=bool)))}


@torch.no_grad()
def iterate_to_rest(f: LoopFn, z0: torch.Tensor, cap: int, rest_tol: float = 1e-6) -> torch.Tensor:
    """Plain iteration z <- f(z) from z0 (B, T, d) until every sample changes by less than
    ``rest_tol`` (relative) or ``cap`` steps: a reference fixed point far tighter than a solve."""
    z = z0
    for _ in range(cap):
        z_next = f(z)
        change = _per_sample_norm(z_next - z) / _per_sample_norm(z_next).clamp_min(_TINY)
        z = z_next
        if not bool((change >= rest_tol).any()):  # NaN counts as not at rest
            break
    return z


def _jvp(fn, primal: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """Forward-mode J_fn(primal) @ tangent. Attention runs on the math SDPA kernel because the fused
    kernels lack forward-mode AD."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(fn, (primal,), (tangent,))[1]


def spectral_radius(f: LoopFn, z: torch.Tensor, iters: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) estimate of |lambda_max| of J = df/dz at z (B, T, d), per sample.

    Power iteration v <- Jv/||Jv|| (J is block diagonal over the batch, so one batched jvp iterates
    every sample). The estimate is the geometric mean of the growth ratios ||Jv||/||v|| over the
    second half of the iterations, which converges to |lambda_max| also when the dominant
    eigenvalues are a complex pair (single-step ratios then oscillate).
    """
    z = z.detach()
    v = _unit(torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device))
    log_growth = []
    for i in range(iters):
        jv = _jvp(f, z, v)
        growth = _per_sample_norm(jv)  # (B,), ||v|| = 1
        if i >= iters // 2:
            log_growth.append(torch.log(growth.clamp_min(_TINY)))
        v = jv / _per_sample(growth.clamp_min(_TINY), jv)
    return torch.stack(log_growth).mean(0).exp()


def gmres(matvec: LoopFn, rhs: torch.Tensor, *, iters: int = GMRES_ITERS, tol: float = GMRES_TOL
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve A u = rhs per sample for a block-diagonal A given by ``matvec`` (B, ...) -> (B, ...).

    Batched GMRES without restart (Saad & Schultz 1986): one Arnoldi basis per sample (modified
    Gram-Schmidt), the small least-squares problem by pseudo-inverse in float64 so a happy
    breakdown (exact solution found) needs no special case. Returns u (B, ...) and the relative
    residual (B,). A zero right-hand side gives u = 0 exactly (residual 0).
    """
    shape, b = rhs.shape, rhs.shape[0]
    flat = rhs.flatten(1)
    beta = flat.norm(dim=1)  # (B,)
    basis = [flat / beta.clamp_min(_TINY)[:, None]]
    hess = torch.zeros(b, iters + 1, iters, dtype=torch.float64, device=rhs.device)
    coef = torch.zeros(b, 0, dtype=torch.float64, device=rhs.device)
    rel = torch.zeros(b, dtype=torch.float64, device=rhs.device)
    for j in range(iters):
        w = matvec(basis[j].view(shape)).flatten(1)
        for i in range(j + 1):
            h = (w * basis[i]).sum(1)
            hess[:, i, j] = h.double()
            w = w - h[:, None] * basis[i]
        h_next = w.norm(dim=1)
        hess[:, j + 1, j] = h_next.double()
        small = hess[:, :j + 2, :j + 1]  # (B, j+2, j+1)
        e1 = torch.zeros(b, j + 2, 1, dtype=torch.float64, device=rhs.device)
        e1[:, 0, 0] = beta.double()
        coef = (torch.linalg.pinv(small) @ e1).squeeze(-1)  # (B, j+1)
        rel = (small @ coef[..., None] - e1).squeeze(-1).norm(dim=1) / beta.double().clamp_min(_TINY)
        if bool(((rel < tol) | (beta == 0)).all()):
            break
        basis.append(w / h_next.clamp_min(_TINY)[:, None])
    stacked = torch.stack(basis[:coef.shape[1]], 1)  # (B, k, N)
    u = (coef.to(rhs.dtype)[:, :, None] * stacked).sum(1)
    zero = beta == 0
    u = torch.where(zero[:, None], torch.zeros_like(u), u)
    return u.view(shape), torch.where(zero, torch.zeros_like(rel), rel)


def implicit_input_derivative(step: StepFn, z: torch.Tensor, x: torch.Tensor, v: torch.Tensor, *,
                              iters: int = GMRES_ITERS, tol: float = GMRES_TOL) -> torch.Tensor:
    """(B, T, d) dz*/dx . v = (I - J)^-1 (dF/dx) v at a fixed point z of F(.; x) = step(., x).

    Implicit function theorem on z* = F(z*; x): the input tangent v enters through dF/dx (one JVP
    in x), then (I - J) u = w is solved with GMRES on JVPs in z. Samples whose solve did not reach
    ``tol`` come back as NaN. Without recall F ignores x, w = 0 and u = 0 exactly.
    """
    z, x = z.detach(), x.detach()
    w = _jvp(lambda xx: step(z, xx), x, v)
    u, rel = gmres(lambda t: t - _jvp(lambda zz: step(zz, x), z, t), w, iters=iters, tol=tol)
    return torch.where(_per_sample(rel < tol, u), u, torch.full_like(u, float("nan")))


def _inf_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) max|a - b| / max|b| per sample: the solver's relative inf-norm."""
    return (a - b).abs().flatten(1).amax(1) / b.abs().flatten(1).amax(1).clamp_min(_TINY)


def _rms(z: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) root mean square of each sample."""
    return z.flatten(1).pow(2).mean(1).sqrt()


def _mean_pairwise_distance(z: torch.Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of samples of z (B, ...); nan if B < 2."""
    flat = z.flatten(1).double()
    if flat.shape[0] < 2:
        return float("nan")
    dist = torch.cdist(flat, flat)  # (B, B)
    b = flat.shape[0]
    return float(dist.sum() / (b * (b - 1)))


def _median(values: torch.Tensor) -> float:
    """Median of the finite entries of a (B,) tensor; nan if none."""
    values = values[torch.isfinite(values)]
    return float(values.double().median()) if values.numel() else float("nan")


@contextlib.contextmanager
def eval_mode(model):
    """Run a block with ``model.eval()`` and restore the previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def probe_loop(model, inputs: torch.Tensor, *, cap: int, power_iters: int, seed: int = 0) -> dict[str, float]:
    """Input-derivative, basin jumps, fixed-point spread, path independence and spectral radius.

    inputs: (B, *shape) tokens of one eval split (one size, so one T), already the probe subset.
    z* is the solver's state (model.solver_cfg, ``cap``) from the model's z0; an instance counts as
    verified when the solver's residual fell below tol. Keys PROBE_KEYS; medians over verified
    instances (nan when none is verified). The spread is the mean pairwise distance of verified z*
    over that of their x; path independence the distance between z* from the model's z0 and from a
    random z0' (per-sample RMS of x: FPRM's bound ||z*|| <= ||x|| + a2*c_f), over the start gap.
    """
    with eval_mode(model), torch.no_grad():
        return _probe_loop(model, inputs, cap, power_iters, seed)


def _solve_from(model, x: torch.Tensor, shape: tuple, cap: int, z0: torch.Tensor | None = None):
    lm = model.loop_map_from_embedding(x, shape)
    return solve(lm.f_subset, lm.z0 if z0 is None else z0, model.solver_cfg, cap, train=False)


def _probe_loop(model, inputs: torch.Tensor, cap: int, power_iters: int, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(inputs.shape[1:])
    tol = model.solver_cfg.tol
    lm = model.loop_map(inputs)
    x = lm.x  # (B, T, d)
    z_star, trace = _solve_from(model, x, shape, cap)
    ok = trace.converged
    out = dict.fromkeys(PROBE_KEYS, float("nan"))
    out.update(probe_n=float(x.shape[0]), probe_verified=float(ok.float().mean()))
    if not bool(ok.any()):
        return out
    x, z_star = x[ok], z_star[ok]
    ref = model.loop_map_from_embedding(x, shape)
    v = _unit(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
    u = implicit_input_derivative(ref.step, z_star, x, v)  # (A, T, d), NaN where unsolved
    out["input_derivative"] = _median(_per_sample_norm(u))
    x_norm = _per_sample_norm(x)
    for eps, key in zip(JUMP_EPSILONS, JUMP_KEYS):
        shift = _per_sample(eps * x_norm, x)
        z_moved, moved_trace = _solve_from(model, x + shift * v, shape, cap)
        beyond = _inf_change(z_moved, z_star + shift * torch.nan_to_num(u))
        jumped = (beyond > JUMP_TOL_FACTOR * tol) | ~moved_trace.converged
        out[key] = float(jumped.float().mean())
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    z0_random = noise * _per_sample(_rms(x) / _rms(noise).clamp_min(_TINY), x)
    z_path, _ = _solve_from(model, x, shape, cap, z0=z0_random)
    gap = _per_sample_norm(z0_random - ref.z0).clamp_min(_TINY)
    out["path_independence"] = _median(_per_sample_norm(z_path - z_star) / gap)
    x_spread = _mean_pairwise_distance(x)
    out["fixed_point_spread"] = _mean_pairwise_distance(z_star) / x_spread if x_spread > 0 else float("nan")
    out[SPECTRAL_RADIUS] = _median(spectral_radius(ref.f, z_star, power_iters, generator))
    return out


def fixed_point_radius(model, inputs: torch.Tensor, *, cap: int, power_iters: int, seed: int = 0,
                       batch_size: int = 64) -> float:
    """Median rho(dF/dz) over *every* verified fixed point of ``inputs`` (B, *shape), not a probe subset.

    The regime a trained model is in (issue 26): the spectral label sigma is only an initial
    condition, so each ok trial's 'id' row carries this measured value in ``spectral_radius``
    whatever ``eval.diagnostics`` says (``fpr_core.experiment.evaluate_splits``). Solved with the
    model's solver and ``cap`` in batches of ``batch_size``; instances the solver did not verify
    (capped, cycled) are left out; nan when none is verified."""
    radii = []
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(inputs.shape[1:])
    with eval_mode(model), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            lm = model.loop_map(inputs[start:start + batch_size])
            z_star, trace = solve(lm.f_subset, lm.z0, model.solver_cfg, cap, train=False)
            ok = trace.converged
            if bool(ok.any()):
                ref = model.loop_map_from_embedding(lm.x[ok], shape)
                radii.append(spectral_radius(ref.f, z_star[ok], power_iters, generator))
    return _median(torch.cat(radii)) if radii else float("nan")


def stability_diagnostics(model, inputs: torch.Tensor, *, cap: int, power_iters: int,
                          seed: int = 0) -> dict[str, float]:
    """All three axes on one batch of ``inputs`` (B, *shape): keys DIAGNOSTIC_KEYS.

    Reachability comes from the model's own solve with ``cap``; the rest from ``probe_loop`` on the
    same batch. ``evaluate_split`` computes reachability on the whole split instead and probes a
    seeded random subset; this is the one-batch form for notebooks and tests.
    """
    with eval_mode(model), torch.no_grad():
        trace = model(inputs, cap=cap).trace
        out = reachability(trace.iterations, trace.residual, trace.converged, trace.cycled)
        out.update(_probe_loop(model, inputs, cap, power_iters, seed))
    return {k: out[k] for k in DIAGNOSTIC_KEYS}
