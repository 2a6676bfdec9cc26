"""Residual scaling coefficients (FPRM) and the three recall placements (DESIGN.md, 'Recall').

Recall strategies share one interface, picked by name from ``RECALLS``:
  ``enter(z, x, coeffs)``      applied to the state at loop entry (standard recall injects x here)
  ``sublayer_input(z, x, i)``  what sublayer i reads, before its pre-norm (internal recall: W_i[z; x])

Initial states are the model's choice (``model.z0``; fpr_core.model.looped).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fpr_core.registry import Registry

RECALLS: Registry = Registry("model.recall")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


ENTRY_FORMS = ("coupled", "outer_only", "shrink", "plain")
"""Loop-entry forms (``ModelConfig.entry_form()``; the option is ``model.loop_entry``)."""


class ResidualCoefficients(nn.Module):
    """FPRM's residual coefficients over S sublayers per loop step, ``a = sigmoid(logit)`` per channel.

    The form is the loop entry in force (``ModelConfig.entry_form``):
    'coupled' (FPRM's default, for scaled standard recall): sublayers ``z <- a1*z + b1*f(Norm(z))``,
    loop entry ``z <- a2*z + b2*x`` with ``b2 = 1 - a2*a1^S`` and ``b1 = b2(1 - a1)/(1 - a1^S)``, so a
    constant state stays bounded by x. The coupling exists because b2*x is injected.
    'outer_only' (FPRM's ``outer_only=True``, models/transformer.py): a1 = b1 = 1 (plain residual
    sublayers) and ``z <- a2*z + (1 - a2)*x`` at loop entry.
    'shrink' (this project's first form where nothing is injected): a1 = b1 = 1 and ``z <- a2*z``.
    'plain' (Deep Thinking's residual block, Bansal et al. 2022): every coefficient 1, no logits.
    Only the logits a form uses exist, so every learned coefficient shapes the step.
    mode: 'learned' (logits are Parameters, no weight decay), 'fixed' (buffers), 'none' (every
    coefficient 1: a plain residual and additive injection z + x, Fan et al. 2025).
    """

    def __init__(self, mode: str, dim: int, n_sublayers: int, a1_init: float, a2_init: float,
                 form: str = "coupled") -> None:
        super().__init__()
        if mode not in ("none", "fixed", "learned"):
            raise ValueError(f"model.residual_scale: got {mode!r}, expected 'none', 'fixed' or 'learned'")
        if form not in ENTRY_FORMS:
            raise ValueError(f"residual coefficient form: got {form!r}, expected one of {ENTRY_FORMS}")
        self.mode, self.form = mode, form
        self.n_sublayers = n_sublayers
        self.register_buffer("ones", torch.ones(dim), persistent=False)  # (d,): the coefficients of 'plain'
        logits = {} if form == "plain" else {"a2_logit": _logit(a2_init)}
        if form == "coupled":
            logits["a1_logit"] = _logit(a1_init)
        for name, value in logits.items():
            tensor = torch.full((dim,), value)
            if mode == "learned":
                setattr(self, name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)

    @property
    def scales_sublayers(self) -> bool:
        """False where a1 = b1 = 1 (no scaling, or nothing injected): a sublayer's residual is then
        a plain add."""
        return self.mode != "none" and self.form == "coupled"

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a1, b1, a2, b2), each (d,)."""
        one = self.ones
        if self.mode == "none" or self.form == "plain":
            return one, one, one, one
        a2 = torch.sigmoid(self.a2_logit)
        if self.form in ("outer_only", "shrink"):
            return one, one, a2, 1.0 - a2
        a1 = torch.sigmoid(self.a1_logit)
        a1_s = a1 ** self.n_sublayers
        b2 = 1.0 - a2 * a1_s
        b1 = b2 * (1.0 - a1) / (1.0 - a1_s)
        return a1, b1, a2, b2


class _Recall(nn.Module):
    entry: str = "plain"
    """The loop-entry form (``ENTRY_FORMS``), set by ``make_recall``."""

    def enter(self, z: torch.Tensor, x: torch.Tensor, coeffs) -> torch.Tensor:
        """Nothing injected: z unchanged ('plain'), or z <- a2*z ('shrink'; a2 = 1 without scaling)."""
        if self.entry == "plain":
            return z
        _, _, a2, _ = coeffs
        return a2 * z

    def sublayer_input(self, z: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return z


@RECALLS.register("none")
class NoRecall(_Recall):
    """x enters only through z0 = x; the loop is autonomous (SGLT: countably many fixed points)."""

    def __init__(self, dim: int, n_sublayers: int, form: str) -> None:
        super().__init__()


@RECALLS.register("standard")
class StandardRecall(_Recall):
    """x injected into the residual stream at loop entry.

    form='scaled': FPRM's ``z <- a2*z + b2*x`` (coefficients from ResidualCoefficients: coupled, or
    outer_only with b2 = 1 - a2);
    form='concat': Deep Thinking's ``z <- W[z; x]`` (W initialised near [I/2, I/2]), with the state
    first shrunk by a2 under the 'shrink' entry (``W[a2*z; x]``, this project's first form).
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
        _, _, a2, b2 = coeffs
        if self.form == "concat":  # shrink: a2 scales the state, W mixes in x; plain: DT's W[z; x]
            return self.proj(torch.cat([z if self.entry == "plain" else a2 * z, x], dim=-1))  # (B, T, d)
        return torch.addcmul(b2 * x, a2, z)  # a2*z + b2*x


@RECALLS.register("internal")
class InternalRecall(_Recall):
    """SGLT's internal recall: sublayer i reads ``r = Norm(W_i[z; x])``; x never enters the stream.
    With an outer norm, ``model.internal_norm`` decides whether it follows every residual add."""

    def __init__(self, dim: int, n_sublayers: int, form: str) -> None:
        super().__init__()
        self.projs = nn.ModuleList(nn.Linear(2 * dim, dim, bias=False) for _ in range(n_sublayers))

    def sublayer_input(self, z: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.projs[i](torch.cat([z, x], dim=-1))  # (B, T, d)


def make_recall(name: str, dim: int, n_sublayers: int, form: str, entry: str = "plain") -> _Recall:
    """Build the recall strategy registered under ``name`` ('none' | 'standard' | 'internal') with the
    loop-entry form ``entry`` (``ENTRY_FORMS``)."""
    if entry not in ENTRY_FORMS:
        raise ValueError(f"loop entry form: got {entry!r}, expected one of {ENTRY_FORMS}")
    recall = RECALLS.get(name)(dim, n_sublayers, form)
    recall.entry = entry
    return recall
