"""The spectral regime of the loop (``model.spectral``, ``model.spectral_mode``; DESIGN.md, 'Spectral regime').

Every linear map inside the loop (mixer and MLP, recall projections; not the depthwise convs, not
embedding or readout) gets torch's ``spectral_norm`` parametrization followed by a scale ``c``, so
each map has operator norm c throughout training.

- ``per_map``: c = sigma. A loop step composes two or three such maps per sublayer, so the step's
  gain compounds to about sigma^2..sigma^3 (the first form of this project).
- ``step``: sigma is the gain of the loop step as a whole, before the outer norm: the spectral norm
  ``||dF_pre/dz||_2`` of the step's Jacobian (its linear part) on unit-RMS states, the scale the
  outer norm keeps the state at. c is calibrated once, at construction, by bisection, so the
  measured gain at initialisation is sigma; training then moves the weights within the
  constraint, and the loop's geometry after training is *measured* (rho(dF/dz) at z*).

The gain is a median over reference samples of each sample's largest singular value of J, found by
power iteration on J^T J with ``torch.func`` JVPs and VJPs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

SPECTRAL_WARMUP_ITERS = 200
"""Extra power iterations at construction so each sigma(W) is exact from the first step."""
GAIN_ITERS = 30
"""Power iterations on J^T J for a gain measured from a random start."""
WARM_ITERS = 10
"""Power iterations when warm-started from the previous scale's singular vectors."""
HOLD_ITERS = 2
"""Power iterations per optimizer step of ``spectral_hold: every_step``, warm-started from the last
step's vectors: the iteration is spread over training as torch's spectral_norm spreads its own
(one step per forward; Miyato et al. 2018)."""
CALIBRATION_BATCH = 8
"""Reference samples the step gain is calibrated on."""
CALIBRATION_RTOL = 1e-2
"""The calibration stops when the measured log gain is within this distance of log sigma."""
CALIBRATION_STEPS = 12
"""At most this many secant steps."""
SCALE_RANGE = (1e-3, 1e3)
"""Bracket of the common map scale c searched by the calibration."""

StepFn = Callable[[torch.Tensor], torch.Tensor]


class ScaleBy(nn.Module):
    """Parametrization W -> c * W, stacked on spectral_norm; c is a buffer (saved with the weights)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.scale


def normalise_maps(linears: list[nn.Linear], scale: float) -> list[ScaleBy]:
    """Give each map spectral norm ``scale``; returns the ScaleBy modules (to recalibrate c)."""
    scales = []
    for lin in linears:
        spectral_norm(lin)
        sn = lin.parametrizations.weight[0]
        with torch.no_grad():  # torch's own power method (private API, torch 2.13)
            sn._power_method(sn._reshape_weight_to_matrix(lin.parametrizations.weight.original),
                             SPECTRAL_WARMUP_ITERS)
        scale_mod = ScaleBy(scale)
        parametrize.register_parametrization(lin, "weight", scale_mod)
        scales.append(scale_mod)
    return scales


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (v.dim() - 1)))


def jacobian_norm(f: StepFn, z: torch.Tensor, iters: int = GAIN_ITERS, v: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ||df/dz||_2 at z (B, T, d) -> ((B,), the top right-singular vectors (B, T, d)).

    f must act on each sample independently (the loop step does). Power iteration v <- J^T J v,
    warm-started from v if given."""
    v = _unit(torch.randn_like(z) if v is None else v)
    with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD through attention
        _, vjp_fn = torch.func.vjp(f, z)
        for _ in range(iters):
            _, jv = torch.func.jvp(f, (z,), (v,))
            v = _unit(vjp_fn(jv)[0])
        _, jv = torch.func.jvp(f, (z,), (v,))
    return jv.flatten(1).norm(dim=1), v


def unit_rms_states(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gaussian states (B, T, d) with every token at RMS 1 (where the outer norm keeps the state)."""
    z = torch.randn(shape, generator=generator)
    return z / z.pow(2).mean(-1, keepdim=True).sqrt()


def calibrate_scale(scales: list[ScaleBy], gain: Callable[[bool], float], sigma: float, what: str) -> float:
    """Set every ScaleBy to the common c at which the step gain equals sigma; returns c.

    ``gain(exact)`` measures the gain at the current c (exact=False may warm-start a shorter power
    iteration). Secant steps on log(gain) against log(c) (branch gains grow like a power of c),
    from c = sqrt(sigma) (two maps per sublayer path); the last step is confirmed by an exact
    measurement. Raises ValueError naming the reachable range when sigma is outside it (a plain
    residual's identity skip alone has gain ~1, so it cannot be made contractive)."""
    def log_gap(log_c: float, exact: bool) -> float:
        for s in scales:
            s.scale.fill_(math.exp(log_c))
        return math.log(gain(exact)) - math.log(sigma)

    lo_bound, hi_bound = (math.log(c) for c in SCALE_RANGE)
    x0 = 0.5 * math.log(sigma)
    f0 = log_gap(x0, True)
    x1 = min(max(x0 - f0 / 2.0, lo_bound), hi_bound)  # as if the gain grew like c^2
    for _ in range(CALIBRATION_STEPS):
        f1 = log_gap(x1, False)
        if abs(f1) < CALIBRATION_RTOL:
            f1 = log_gap(x1, True)
            if abs(f1) < 2 * CALIBRATION_RTOL:
                return math.exp(x1)
        slope = (f1 - f0) / (x1 - x0) if abs(x1 - x0) > 1e-12 else 2.0
        slope = slope if slope > 0.05 else 0.05  # the gain rises with c; a flat stretch is the skip floor
        x0, f0, x1 = x1, f1, min(max(x1 - f1 / slope, lo_bound), hi_bound)
    g_lo, g_hi = (sigma * math.exp(log_gap(b, True)) for b in (lo_bound, hi_bound))
    raise ValueError(f"model.spectral: got {sigma}, but with {what} the loop step's gain at initialisation "
                     f"could not be brought there (it ranges over about [{g_lo:.3g}, {g_hi:.3g}]; the skip "
                     f"path alone gives {g_lo:.3g}); pick sigma in that range, or spectral_mode per_map")
