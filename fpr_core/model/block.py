"""The MLP sublayer, and the transformer block applied n_layers times per loop step.

A sublayer update is ``z <- Post(a1*z + b1*f(PreNorm(recall.sublayer_input(z, x, i))))`` (FPRM
residual scaling; a1 = b1 = 1 where FPRM's coupling does not apply). Post is the outer norm after
every residual add for internal recall in its published form (``model.internal_norm``), else
the identity. The block's first sublayer is the token mixer
(``model.mixer``: global attention, local attention or a depthwise conv; fpr_core.model.mixers), the
second the MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.model.mixers import make_mixer


class MLP(nn.Module):
    """SwiGLU (FPRM) or GELU MLP with hidden width mlp_ratio*dim."""

    def __init__(self, dim: int, ratio: float, kind: str) -> None:
        super().__init__()
        if kind not in ("swiglu", "gelu"):
            raise ValueError(f"model.mlp: got {kind!r}, expected 'swiglu' or 'gelu'")
        hidden = max(1, int(round(ratio * dim)))
        self.kind = kind
        self.up = nn.Linear(dim, 2 * hidden if kind == "swiglu" else hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        u = self.up(h)
        if self.kind == "swiglu":
            gate, val = u.chunk(2, dim=-1)
            return self.down(F.silu(gate) * val)
        return self.down(F.gelu(u))


class Block(nn.Module):
    """One mixing sublayer then one MLP sublayer, each with pre-norm and scaled residual.

    The mixer is stored as ``attn`` whatever its kind, so checkpoints of attention models keep
    their parameter names."""

    def __init__(self, cfg, pre_norm: nn.Module, post_norm: nn.Module, grid: bool, scaled: bool) -> None:
        """scaled: False where a1 = b1 = 1 (ResidualCoefficients.scales_sublayers)."""
        super().__init__()
        self.attn = make_mixer(cfg.mixer, cfg.dim, cfg.heads, cfg.mixer_window, cfg.causal, grid, cfg.init_std)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio, cfg.mlp)
        self.pre_norm, self.post_norm = pre_norm, post_norm
        self.scaled = scaled

    def residual(self, z: torch.Tensor, update: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        """a1*z + b1*update (z + update where both coefficients are 1: the same values, two kernels fewer)."""
        return torch.addcmul(a1 * z, b1, update) if self.scaled else z + update

    def forward(self, z, x, recall, coeffs, first_sublayer: int, shape, rope, scale: float, *,
                post: bool = True) -> torch.Tensor:
        """(B, T, d) -> (B, T, d); post=False leaves out the post norms (the step before its outer
        norms, whose gain the spectral regime sets)."""
        a1, b1, _, _ = coeffs
        post_norm = self.post_norm if post else (lambda t: t)
        h = self.pre_norm(recall.sublayer_input(z, x, first_sublayer))
        z = post_norm(self.residual(z, self.attn(h, shape, rope, scale), a1, b1))
        h = self.pre_norm(recall.sublayer_input(z, x, first_sublayer + 1))
        return post_norm(self.residual(z, self.mlp(h), a1, b1))
