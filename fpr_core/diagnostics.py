"""The three stability axes of a looped model (SGLT; DESIGN.md, 'Stability diagnostics').

- Reachability (from the solver's traces of a whole split): converged fraction, iteration
  quantiles, median final residual, cycled fraction.
- Input-dependence (on a subset of instances): how the fixed point moves with the input embedding
  x: ``||z*(x) - z*(x')|| / ||x - x'||`` for a small random perturbation x' = x + delta, and the
  spread of z* over distinct inputs relative to the spread of their embeddings; plus path
  independence, ``||z*(z0) - z*(z0')|| / ||z0 - z0'||`` from the model's z0 and a random z0': the
  fraction of the initial-state gap that survives the loop (0 = the start is forgotten; normalising
  by the gap rather than by ||z*|| keeps it meaningful when z* = 0, as in an autonomous contraction).
- Geometry: the spectral radius of J = dF/dz at z*, by power iteration on Jacobian-vector
  products (``torch.func.jvp``).

Why a separate, plain iteration for the probes: the solver halts each sample as soon as its
residual r < tol, so two solves of nearby inputs can stop at different steps and differ by about
tol*||z||, far more than a small perturbation moves the true fixed point. The probes therefore
iterate the loop map z <- F(z) jointly for the reference, the perturbed input and the random start
(one batch, the same number of steps), until every state is at rest to float precision
(``REST_TOL``) or the split's eval cap. The finite difference is then one of a smooth map, which
tends to dz*/dx when the loop converges; when it does not, the probes report the state after the
cap, so large values honestly say 'no input-smooth fixed point was reached'.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PERTURBATION = 1e-2
"""Relative size of the input perturbation: ||delta|| = PERTURBATION * ||x|| per sample."""
REST_TOL = 1e-6
"""A probe state is at rest when ||F(z) - z|| / ||F(z)|| < REST_TOL for every sample."""

LoopFn = Callable[[torch.Tensor], torch.Tensor]

DIAGNOSTIC_KEYS = ("reachability", "iters_p50", "iters_p95", "residual_median", "cycled_frac",
                   "input_dependence", "fixed_point_spread", "path_independence", "spectral_radius")


def _per_sample_norm(z: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) Euclidean norm of each sample."""
    return z.flatten(1).norm(dim=1)


def reachability(iterations, residual, converged, cycled) -> dict[str, float]:
    """Reachability axis from per-sample solver statistics (each (N,), tensors or arrays)."""
    iters = np.asarray(torch.as_tensor(iterations).cpu(), dtype=np.float64)
    return {"reachability": float(np.mean(np.asarray(torch.as_tensor(converged).cpu(), dtype=bool))),
            "iters_p50": float(np.percentile(iters, 50)),
            "iters_p95": float(np.percentile(iters, 95)),
            "residual_median": float(np.median(np.asarray(torch.as_tensor(residual).float().cpu()))),
            "cycled_frac": float(np.mean(np.asarray(torch.as_tensor(cycled).cpu(), dtype=bool)))}


@torch.no_grad()
def iterate_to_rest(f: LoopFn, z0: torch.Tensor, cap: int) -> torch.Tensor:
    """Plain iteration z <- f(z) from z0 (B, T, d) until every sample is at rest or ``cap`` steps."""
    z = z0
    for _ in range(cap):
        z_next = f(z)
        change = _per_sample_norm(z_next - z) / _per_sample_norm(z_next).clamp_min(1e-30)
        z = z_next
        if not bool((change >= REST_TOL).any()):  # NaN counts as not at rest
            break
    return z


def spectral_radius(f: LoopFn, z: torch.Tensor, iters: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) estimate of |lambda_max| of J = df/dz at z (B, T, d), per sample.

    Power iteration v <- Jv/||Jv|| with ``torch.func.jvp`` (J is block diagonal over the batch, so
    one batched jvp iterates every sample). The estimate is the geometric mean of the growth ratios
    ||Jv||/||v|| over the second half of the iterations, which converges to |lambda_max| also when
    the dominant eigenvalues are a complex pair (single-step ratios then oscillate).
    Attention runs on the math SDPA kernel here because the fused kernels lack forward-mode AD.
    """
    z = z.detach()
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    v = v / _per_sample_norm(v).clamp_min(1e-30).view(-1, *([1] * (z.dim() - 1)))
    log_growth = []
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for i in range(iters):
            _, jv = torch.func.jvp(f, (z,), (v,))
            growth = _per_sample_norm(jv)  # (B,), ||v|| = 1
            if i >= iters // 2:
                log_growth.append(torch.log(growth.clamp_min(1e-30)))
            v = jv / growth.clamp_min(1e-30).view(-1, *([1] * (z.dim() - 1)))
    return torch.stack(log_growth).mean(0).exp()


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


def _nanmedian(values: torch.Tensor) -> float:
    """Median of a (B,) tensor where non-finite entries count as +inf (a blown-up probe)."""
    values = torch.where(torch.isfinite(values), values, torch.full_like(values, float("inf")))
    return float(values.double().median())


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
    """Input-dependence, fixed-point spread, path independence and spectral radius on ``inputs``.

    inputs: (B, *shape) tokens of one eval split (one size, so one T). The reference z* starts at
    the model's z0; the perturbed one at the z0 the model derives from x + delta (recall='none'
    starts at z0 = x); the path probe at a random Gaussian z0' with the per-sample RMS of x (the
    scale of the state: FPRM's bound ||z*|| <= ||x|| + a2*c_f). Each value is a median over
    samples (non-finite counts as +inf); 0 means 'does not depend'. The spread is the mean pairwise
    distance of z* over the mean pairwise distance of x (nan for B < 2).
    """
    with eval_mode(model):
        return _probe_loop(model, inputs, cap, power_iters, seed)


def _probe_loop(model, inputs: torch.Tensor, cap: int, power_iters: int, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(inputs.shape[1:])
    with torch.no_grad():
        x = model.loop_map(inputs).x  # (B, T, d)
        b = x.shape[0]
        delta = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        scale = PERTURBATION * _per_sample_norm(x) / _per_sample_norm(delta).clamp_min(1e-30)
        delta = delta * scale.view(-1, 1, 1)
        joint = model.loop_map_from_embedding(torch.cat([x, x + delta, x]), shape)  # 3B samples
        z0 = joint.z0.clone()
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        z0[2 * b:] = noise * (_rms(x) / _rms(noise).clamp_min(1e-30)).view(-1, 1, 1)
        z = iterate_to_rest(joint.f, z0, cap)
        z_ref, z_pert, z_path = z[:b], z[b:2 * b], z[2 * b:]
        sensitivity = _per_sample_norm(z_pert - z_ref) / _per_sample_norm(delta).clamp_min(1e-30)
        start_gap = _per_sample_norm(z0[2 * b:] - z0[:b]).clamp_min(1e-30)
        path = _per_sample_norm(z_path - z_ref) / start_gap
        x_spread = _mean_pairwise_distance(x)
        spread = _mean_pairwise_distance(z_ref) / x_spread if x_spread > 0 else float("nan")
    ref_map = model.loop_map_from_embedding(x, shape)
    rho = spectral_radius(ref_map.f, z_ref, power_iters, generator)
    return {"input_dependence": _nanmedian(sensitivity), "fixed_point_spread": spread,
            "path_independence": _nanmedian(path), "spectral_radius": _nanmedian(rho)}


@torch.no_grad()
def _solve_traces(model, inputs: torch.Tensor, cap: int):
    return model(inputs, cap=cap).trace


def stability_diagnostics(model, inputs: torch.Tensor, *, cap: int, power_iters: int,
                          seed: int = 0) -> dict[str, float]:
    """All three axes on one batch of ``inputs`` (B, *shape): keys DIAGNOSTIC_KEYS.

    Reachability comes from the model's own solve (its solver, tol and halting) with ``cap``; the
    rest from ``probe_loop``. ``evaluate_split`` computes reachability on the whole split instead and
    probes a subset; this is the one-batch form for notebooks and tests.
    """
    with eval_mode(model):
        trace = _solve_traces(model, inputs, cap)
        out = reachability(trace.iterations, trace.residual, trace.converged, trace.cycled)
        out.update(_probe_loop(model, inputs, cap, power_iters, seed))
    return {k: out[k] for k in DIAGNOSTIC_KEYS}
