"""Parameter-free norms for the loop: pre-norm on sublayer inputs and SGLT's outer normalization.

All norms here have no gain (FPRM's RMSNorm: no gain, eps 1e-5), so the outer norm puts the state
on a sphere whatever the weights do (SGLT) and the norm itself adds nothing to the weight count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.registry import Registry

NORMS: Registry = Registry("model.outer_norm")
EPS = 1e-5


@NORMS.register("rms")
class RMSNorm(nn.Module):
    """x / rms(x) over the last dim, no gain (FPRM)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return F.rms_norm(x, (self.dim,), eps=EPS)  # fused kernel: x / sqrt(mean(x^2) + eps)


@NORMS.register("layer")
class LayerNorm(nn.Module):
    """LayerNorm without affine parameters."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=EPS)


@NORMS.register("none")
class NoNorm(nn.Module):
    """Identity (outer_norm = none, or pre_norm = False)."""

    def __init__(self, dim: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_norm(name: str, dim: int) -> nn.Module:
    """Build the norm registered under ``name`` ('none' | 'rms' | 'layer')."""
    return NORMS.get(name)(dim)
