"""Token mixers: the first sublayer of every block, chosen by ``model.mixer`` (DESIGN.md, 'Mixer').

Every mixer maps the pre-normed state h (B, T, d) of a sequence (shape (L,)) or a grid (shape
(H, W)) to (B, T, d) and has no per-position weights, so it runs at any size:

- ``attention``: global multi-head self-attention (FPRM, SGLT). With ``causal`` the mask is the
  flattened (raster) order, so token t sees tokens <= t (FPRM runs state tracking causally).
- ``local_attention``: each token attends only to a k x k window around it on grids, a k-token
  window on sequences (k = ``mixer_window``; neighbourhood attention, Hassani et al. 2023, with
  zero-padded borders masked out). The number of keys does not grow with the input, so a
  local rule learned at 9x9 is the same rule at 59x59 (DESIGN.md: global attention without
  positions did not carry mazes 9 -> 33). Causal: the window ends at the token (the k x k window
  above and to the left on grids).
- ``conv``: a depthwise conv over the grid / sequence and no attention (Deep Thinking's nets are
  fully convolutional; measured here: conv + MLP solved 32/32 33x33 mazes after training on 9x9).
  Causal: left padding k-1 (FPRM's causal depthwise conv), and top padding on grids.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.model.positions import DepthwiseTokenConv, apply_rope, grid_of, pad_grid, window_padding
from fpr_core.registry import Registry

MIXERS: Registry = Registry("model.mixer")
SMALL_ATTENTION_TOKENS = 48
"""On CPU, sequences up to this many tokens use explicit softmax(q k^T) v: at these sizes PyTorch's
fused CPU kernel costs more than it saves (measured on 2 cores, batch 64 x 4 heads of 8 dims,
forward + backward: 16 tokens 0.32 ms explicit vs 0.68 ms fused, 48 tokens 2.09 vs 2.11 ms,
64 tokens 3.75 vs 3.39 ms). The same attention up to float rounding; CUDA always takes the fused
kernel."""


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
           allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scale q k^T [+ causal mask]) v over (B, heads, T, hd) tensors; ``allowed`` (T, T)
    bool, True where a query may see a key (model.attention_mask 'board')."""
    n = q.shape[-2]
    if q.device.type != "cpu" or n > SMALL_ATTENTION_TOKENS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, is_causal=causal)
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, heads, T, T)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return logits.softmax(-1) @ v


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, d) -> (B, heads, T, d/heads)."""
    b, n, d = t.shape
    return t.view(b, n, heads, d // heads).transpose(1, 2)


@MIXERS.register("attention")
class Attention(nn.Module):
    """Global multi-head self-attention; q and k rotated by the RoPE tables when positions != 'none';
    ``scale`` may carry the log-n factor; causal = raster-order mask."""

    def __init__(self, dim: int, heads: int, window: int, causal: bool, grid: bool, init_std: float) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.allowed: Optional[torch.Tensor]
        """(T, T) bool board mask (``restrict_to``); None = every token sees every token."""
        self.register_buffer("allowed", None, persistent=False)

    def restrict_to(self, allowed: torch.Tensor) -> None:
        """Let each token attend only where ``allowed`` (T, T) is True (a buffer: it follows .to())."""
        self.allowed = allowed.bool()

    def qkv_heads(self, h: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v each (B, heads, T, hd), q and k rotated."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(h).chunk(3, dim=-1))
        return apply_rope(q, rope), apply_rope(k, rope), v

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, hd) -> out((B, T, d))."""
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))

    def forward(self, h: torch.Tensor, shape, rope, scale: float) -> torch.Tensor:  # (B, T, d)
        q, k, v = self.qkv_heads(h, rope)
        return self.merge(attend(q, k, v, scale, self.causal, self.allowed))


@MIXERS.register("local_attention")
class LocalAttention(Attention):
    """Attention restricted to a k x k window on grids / a k-token window on sequences.

    Keys and values of each window are gathered with ``unfold`` (memory O(T k^2 d), linear in the
    tokens); window slots outside the input are masked out. The logit scale is 1/sqrt(hd) at every
    size: a window has the same number of keys everywhere, so log-n sharpening does not apply."""

    def __init__(self, dim: int, heads: int, window: int, causal: bool, grid: bool, init_std: float) -> None:
        super().__init__(dim, heads, window, causal, grid, init_std)
        self.window = window

    def neighbours(self, t: torch.Tensor, shape) -> torch.Tensor:
        """(B, heads, T, hd) -> (B, heads, hd, n, T): each token's window (n = k*k or k slots)."""
        b, nh, n_tok, hd = t.shape
        kh = self.window if len(shape) == 2 else 1
        grid = t.permute(0, 1, 3, 2).reshape(b, nh * hd, *grid_of(shape))
        cols = F.unfold(pad_grid(grid, window_padding(shape, self.window, self.causal)), (kh, self.window))
        return cols.view(b, nh, hd, kh * self.window, n_tok)

    def valid(self, shape, device) -> torch.Tensor:
        """(T, n) bool: window slots that fall inside the input."""
        kh = self.window if len(shape) == 2 else 1
        ones = torch.ones(1, 1, *grid_of(shape), device=device)
        inside = F.unfold(pad_grid(ones, window_padding(shape, self.window, self.causal)), (kh, self.window))
        return inside[0].T > 0.5

    def forward(self, h: torch.Tensor, shape, rope, scale: float) -> torch.Tensor:
        q, k, v = self.qkv_heads(h, rope)
        keys, values = self.neighbours(k, shape), self.neighbours(v, shape)
        logits = torch.einsum("bhtc,bhcnt->bhtn", q, keys) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(~self.valid(shape, h.device), float("-inf"))
        weights = logits.softmax(dim=-1)
        return self.merge(torch.einsum("bhtn,bhcnt->bhtc", weights, values))


@MIXERS.register("conv")
class ConvMixer(nn.Module):
    """A depthwise conv over the grid (2-D, k x k) or sequence (1-D, k) as the mixing sublayer; the
    MLP that follows mixes channels. No attention and no positions."""

    def __init__(self, dim: int, heads: int, window: int, causal: bool, grid: bool, init_std: float) -> None:
        super().__init__()
        self.conv = DepthwiseTokenConv("2d" if grid else "1d", dim, window, causal, init_std)

    def forward(self, h: torch.Tensor, shape, rope, scale: float) -> torch.Tensor:
        return self.conv(h, shape)


def make_mixer(name: str, dim: int, heads: int, window: int, causal: bool, grid: bool,
               init_std: float) -> nn.Module:
    """Build the mixer registered under ``name`` ('attention' | 'local_attention' | 'conv')."""
    return MIXERS.get(name)(dim, heads, window, causal, grid, init_std)
