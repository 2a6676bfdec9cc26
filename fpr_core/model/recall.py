"""Residual scaling coefficients (FPRM) and the three recall placements (DESIGN.md, 'Recall').

Recall strategies share one interface, picked by name from ``RECALLS``:
  ``z0(x)``                    initial state (B, T, d)
  ``enter(z, x, coeffs)``      applied to the state at loop entry (standard recall injects x here)
  ``sublayer_input(z, x, i)``  what sublayer i reads, before its pre-norm (internal recall: W_i[z; x])

Initial states: recall=none starts at z0 = x (the only way x reaches an autonomous loop);
standard and internal start at z0 = 0, so the fixed point is a function of x alone and the first
step's residual is 1 for every sample (path independence is probed from other z0 by diagnostics).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fpr_core.registry import Registry

RECALLS: Registry = Registry("model.recall")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class ResidualCoefficients(nn.Module):
    """FPRM's coupled residual coefficients over S sublayers per loop step.

    Sublayers: ``z <- a1*z + b1*f(Norm(z))``; scaled recall: ``z <- a2*z + b2*x`` with
    ``b2 = 1 - a2*a1^S`` and ``b1 = b2(1 - a1)/(1 - a1^S)`` (so a constant state stays bounded by x),
    ``a = sigmoid(logit)`` per channel. mode: 'learned' (logits are Parameters), 'fixed' (buffers),
    'none' (a1 = b1 = 1: a plain residual; a2 = b2 = 1: additive injection z + x, Fan et al. 2025).
    """

    def __init__(self, mode: str, dim: int, n_sublayers: int, a1_init: float, a2_init: float) -> None:
        super().__init__()
        if mode not in ("none", "fixed", "learned"):
            raise ValueError(f"model.residual_scale: got {mode!r}, expected 'none', 'fixed' or 'learned'")
        self.mode = mode
        self.n_sublayers = n_sublayers
        a1 = torch.full((dim,), _logit(a1_init))
        a2 = torch.full((dim,), _logit(a2_init))
        if mode == "learned":
            self.a1_logit = nn.Parameter(a1)
            self.a2_logit = nn.Parameter(a2)
        else:
            self.register_buffer("a1_logit", a1)
            self.register_buffer("a2_logit", a2)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a1, b1, a2, b2), each (d,)."""
        if self.mode == "none":
            one = torch.ones_like(self.a1_logit)
            return one, one, one, one
        a1 = torch.sigmoid(self.a1_logit)
        a2 = torch.sigmoid(self.a2_logit)
        a1_s = a1 ** self.n_sublayers
        b2 = 1.0 - a2 * a1_s
        b1 = b2 * (1.0 - a1) / (1.0 - a1_s)
        return a1, b1, a2, b2


class _Recall(nn.Module):
    def z0(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def enter(self, z: torch.Tensor, x: torch.Tensor, coeffs) -> torch.Tensor:
        return z

    def sublayer_input(self, z: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return z


@RECALLS.register("none")
class NoRecall(_Recall):
    """x enters only through z0 = x; the loop is autonomous (SGLT: countably many fixed points)."""

    def __init__(self, dim: int, n_sublayers: int, form: str) -> None:
        super().__init__()

    def z0(self, x: torch.Tensor) -> torch.Tensor:
        return x


@RECALLS.register("standard")
class StandardRecall(_Recall):
    """x injected into the residual stream at loop entry.

    form='scaled': FPRM's ``z <- a2*z + b2*x`` (coefficients from ResidualCoefficients);
    form='concat': Deep Thinking's ``z <- W[z; x]`` (W initialised near [I/2, I/2]).
    """

    def __init__(self, dim: int, n_sublayers: int, form: str) -> None:
        super().__init__()
        if form not in ("scaled", "concat"):
            raise ValueError(f"model.recall_form: got {form!r}, expected 'scaled' or 'concat'")
        self.form = form
        if form == "concat":
            self.proj = nn.Linear(2 * dim, dim, bias=False)
            with torch.no_grad():
                eye = torch.eye(dim)
                self.proj.weight.copy_(torch.cat([eye, eye], dim=1) * 0.5)

    def enter(self, z: torch.Tensor, x: torch.Tensor, coeffs) -> torch.Tensor:
        if self.form == "concat":
            return self.proj(torch.cat([z, x], dim=-1))  # (B, T, d)
        _, _, a2, b2 = coeffs
        return a2 * z + b2 * x


@RECALLS.register("internal")
class InternalRecall(_Recall):
    """SGLT's internal recall: sublayer i reads ``r = Norm(W_i[z; x])``; x never enters the stream."""

    def __init__(self, dim: int, n_sublayers: int, form: str) -> None:
        super().__init__()
        self.projs = nn.ModuleList(nn.Linear(2 * dim, dim, bias=False) for _ in range(n_sublayers))

    def sublayer_input(self, z: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.projs[i](torch.cat([z, x], dim=-1))  # (B, T, d)


def make_recall(name: str, dim: int, n_sublayers: int, form: str) -> _Recall:
    """Build the recall strategy registered under ``name`` ('none' | 'standard' | 'internal')."""
    return RECALLS.get(name)(dim, n_sublayers, form)
