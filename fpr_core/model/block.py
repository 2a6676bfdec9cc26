"""Attention and MLP sublayers, and the transformer block applied n_layers times per loop step.

A sublayer update is ``z <- a1*z + b1*f(PreNorm(recall.sublayer_input(z, x, i)))`` (FPRM residual
scaling; with residual_scale='none' a1 = b1 = 1). Attention is bidirectional and uses torch's
scaled_dot_product_attention with an explicit ``scale`` so log-n scaling can sharpen it on larger
inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.model.positions import apply_rope


class Attention(nn.Module):
    """Multi-head self-attention; q and k rotated by the RoPE tables when positions != 'none'."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, h: torch.Tensor, rope, scale: float) -> torch.Tensor:  # (B, T, d)
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rope), apply_rope(k, rope)          # (B, h, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, h, T, hd)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


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
    """One attention sublayer then one MLP sublayer, each with pre-norm and scaled residual."""

    def __init__(self, dim: int, heads: int, mlp: str, mlp_ratio: float, pre_norm: nn.Module) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim, mlp_ratio, mlp)
        self.pre_norm = pre_norm

    def forward(self, z, x, recall, coeffs, first_sublayer: int, rope, scale: float) -> torch.Tensor:
        a1, b1, _, _ = coeffs
        h = self.pre_norm(recall.sublayer_input(z, x, first_sublayer))
        z = torch.addcmul(a1 * z, b1, self.attn(h, rope, scale))  # a1*z + b1*attn(h), one fewer pass
        h = self.pre_norm(recall.sublayer_input(z, x, first_sublayer + 1))
        return torch.addcmul(a1 * z, b1, self.mlp(h))  # (B, T, d)
