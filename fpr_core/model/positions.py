"""Size-agnostic positional machinery: RoPE (1-D or axial 2-D) and a depthwise conv on the state.

Nothing here is learned per absolute position, so the same weights run on a 16-token sequence and a
512-token one, on a 9x9 grid and a 33x33 grid. Axial 2-D RoPE rotates half of each head's pairs by
the row index and half by the column index, so vertical neighbours are one step apart at any width
(1-D RoPE over a flattened grid puts them `width` steps apart, which changes with size: DESIGN.md).
FPRM puts a depthwise conv on the state at the start of each loop step (2-D k=3 for sudoku, 1-D
k=4 for maze and state tracking) and calls it necessary for fixed-point stability.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.registry import Registry

ROPE_BASE = 10000.0
POSITIONS: Registry = Registry("model.positions")


def _inv_freq(n: int, device) -> torch.Tensor:  # (n,)
    return ROPE_BASE ** (-torch.arange(n, device=device, dtype=torch.float32) / n)


@POSITIONS.register("none")
def no_angles(shape: tuple[int, ...], head_dim: int, device) -> Optional[torch.Tensor]:
    """No positional signal (works with input re-injection: looped length generalization)."""
    return None


@POSITIONS.register("absolute")
def no_rotation(shape: tuple[int, ...], head_dim: int, device) -> Optional[torch.Tensor]:
    """Task-declared absolute coordinates enter through the embedding (BoardCoordinates), not RoPE."""
    return None


class BoardCoordinates(nn.Module):
    """Sum of learned embeddings of fixed board coordinates: (T, K) ids -> (T, d) added to x.

    For tasks whose board has one size (sudoku: row, column, box; chess: square). The ids are a
    buffer, so a saved model carries them; a grid of another shape is an error, never a silent
    reuse of the wrong positions.
    """

    def __init__(self, coordinates: torch.Tensor, dim: int) -> None:
        super().__init__()
        coordinates = torch.as_tensor(coordinates, dtype=torch.long)
        if coordinates.dim() != 2 or coordinates.numel() == 0 or int(coordinates.min()) < 0:
            raise ValueError(f"coordinates: got shape {tuple(coordinates.shape)}, expected (T, K) "
                             "non-negative ids")
        self.register_buffer("ids", coordinates)
        self.tables = nn.ModuleList(nn.Embedding(int(coordinates[:, k].max()) + 1, dim)
                                    for k in range(coordinates.shape[1]))
        for table in self.tables:
            nn.init.normal_(table.weight, std=1.0)  # the scale of the token embedding

    def forward(self, n_tokens: int) -> torch.Tensor:  # (T, d)
        if n_tokens != self.ids.shape[0]:
            raise ValueError(f"model.positions=absolute: the task declared coordinates for "
                             f"{self.ids.shape[0]} tokens, got an input of {n_tokens}")
        return sum(table(self.ids[:, k]) for k, table in enumerate(self.tables))


@POSITIONS.register("rope1d")
def rope1d_angles(shape: tuple[int, ...], head_dim: int, device) -> torch.Tensor:
    """Angles (T, head_dim/2) for 1-D RoPE over the flattened token order."""
    if head_dim % 2:
        raise ValueError(f"model.positions=rope1d: head_dim={head_dim}, expected an even number")
    n_tokens = 1
    for s in shape:
        n_tokens *= s
    pos = torch.arange(n_tokens, device=device, dtype=torch.float32)
    return pos[:, None] * _inv_freq(head_dim // 2, device)[None, :]


@POSITIONS.register("rope2d")
def rope2d_angles(shape: tuple[int, ...], head_dim: int, device) -> torch.Tensor:
    """Angles (H*W, head_dim/2): first half of the pairs rotate by row, second half by column."""
    if len(shape) != 2:
        raise ValueError(f"model.positions=rope2d: needs grid inputs (B, H, W), got token shape {shape}")
    if head_dim % 4:
        raise ValueError(f"model.positions=rope2d: head_dim={head_dim}, expected a multiple of 4")
    h, w = shape
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)  # (H*W,)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)             # (H*W,)
    inv = _inv_freq(head_dim // 4, device)
    return torch.cat([rows[:, None] * inv, cols[:, None] * inv], dim=-1)


def rope_tables(name: str, shape: tuple[int, ...], head_dim: int, device):
    """(cos, sin) each (T, head_dim) for ``apply_rope``, or None for positions='none'."""
    angles = POSITIONS.get(name)(shape, head_dim, device)
    if angles is None:
        return None
    angles = torch.cat([angles, angles], dim=-1)  # (T, head_dim): pair i with i + head_dim/2
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, tables) -> torch.Tensor:
    """Rotate q or k (B, h, T, hd) by the angle tables (rotate-half convention)."""
    if tables is None:
        return x
    cos, sin = tables
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def grid_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of a grid, (1, L) of a sequence: the 2-D layout convs and windows run on."""
    return (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])


def window_padding(shape: tuple[int, ...], k: int, causal: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding so a k-window keeps the size: centred ('same',
    the extra one on the right/bottom for even k) or causal (all k-1 before the token)."""
    def pad(n: int) -> tuple[int, int]:
        return (n - 1, 0) if causal else ((n - 1) // 2, n - 1 - (n - 1) // 2)
    return (pad(k) if len(shape) == 2 else (0, 0)), pad(k)


def pad_grid(t: torch.Tensor, pads) -> torch.Tensor:
    """Zero-pad (..., H, W) by ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = pads
    return F.pad(t, (left, right, top, bottom))


class DepthwiseTokenConv(nn.Module):
    """A depthwise conv over tokens: (B, T, d) -> (B, T, d), 1-D on sequences, 2-D on grids.

    ``causal`` pads k-1 on the left (and on top on grids), FPRM's causal conv; otherwise 'same'
    padding. The weight lives in ``self.conv``, an nn.Conv2d (kernel k x k on grids, 1 x k on
    sequences: a sequence is a 1 x T image) padded by the larger side of that window.

    Why 2-D in channels-last memory: the tokens viewed as (B, d, H, W) are that image in
    channels-last memory with no copy, and PyTorch's CPU depthwise conv runs 2-4x faster on it,
    forward and backward, than nn.Conv1d/2d on a transposed contiguous copy (1 thread, dim 32: a 9x9
    maze step conv 1.04 -> 0.54 ms, a length-64 causal k=4 conv 1.89 -> 0.72 ms, fwd+bwd)."""

    def __init__(self, kind: str, dim: int, kernel: int, causal: bool, init_std: float) -> None:
        super().__init__()
        if kind not in ("1d", "2d"):
            raise ValueError(f"model.conv: got {kind!r}, expected '1d' or '2d'")
        self.kind, self.kernel, self.causal = kind, kernel, causal
        (top, bottom), (left, right) = window_padding((1, 1) if kind == "2d" else (1,), kernel, causal)
        padding = (max(top, bottom), max(left, right))
        self.window_start = (padding[0] - top, padding[1] - left)
        """Where the output's first row and column start in the symmetrically padded conv's output."""
        window = (kernel, kernel) if kind == "2d" else (1, kernel)
        self.conv = nn.Conv2d(dim, dim, window, groups=dim, bias=False, padding=padding)
        nn.init.normal_(self.conv.weight, std=init_std)
        self._register_load_state_dict_pre_hook(self._sequence_weight_as_image)

    def forward(self, z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:  # (B, T, d)
        b, t, d = z.shape
        if self.kind == "2d" and len(shape) != 2:
            raise ValueError(f"model.conv=2d: needs grid inputs (B, H, W), got token shape {shape}")
        height, width = tuple(shape) if self.kind == "2d" else (1, t)
        out = self.conv(z.reshape(b, height, width, d).permute(0, 3, 1, 2))
        row, col = self.window_start
        return out[..., row:row + height, col:col + width].permute(0, 2, 3, 1).reshape(b, t, d)

    def _sequence_weight_as_image(self, state: dict, prefix: str, *args) -> None:
        """Weights saved by the nn.Conv1d form, (d, 1, k), load as the 1 x k image kernel."""
        key = prefix + "conv.weight"
        if self.kind == "1d" and key in state and state[key].dim() == 3:
            state[key] = state[key].unsqueeze(2)


CONV_FORMS = ("add", "replace")
"""Forms of the step conv (``model.conv_form``)."""


class DepthwiseConv(DepthwiseTokenConv):
    """The depthwise conv on the state at the start of every loop step (``model.conv``; FPRM: 2-D
    k=3 for sudoku, 1-D k=4 for maze and state tracking), in one of two forms (``model.conv_form``):

    - add: ``z <- z + dwconv(z)``, weights N(0, init_std), so the step starts near the identity
      (this project's form);
    - replace: ``z <- dwconv(z)`` with PyTorch's default conv init (kaiming uniform), FPRM's form
      (models/transformer.py: ``hidden_states = self.conv(hidden_states)``; no bias in its configs).
    """

    def __init__(self, kind: str, dim: int, kernel: int, causal: bool, init_std: float,
                 form: str = "add") -> None:
        super().__init__(kind, dim, kernel, causal, init_std)
        if form not in CONV_FORMS:
            raise ValueError(f"model.conv_form: got {form!r}, expected one of {CONV_FORMS}")
        self.form = form
        if form == "replace":
            self.conv.reset_parameters()  # FPRM keeps nn.Conv's default init

    def forward(self, z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:  # (B, T, d)
        h = super().forward(z, shape)
        return h if self.form == "replace" else z + h
