"""Masked token losses, picked by name (``TrainConfig.loss``).

Every loss has one signature: ``loss_fn(logits, targets, mask) -> scalar`` with
``logits (B, *shape, C)``, ``targets (B, *shape)`` int64 and ``mask (B, *shape)`` bool; the loss is
the mean over masked positions of the whole batch (positions outside the mask never count).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, *shape) values over the True positions of mask; 0 if the mask is empty."""
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy averaged over masked positions (computed in float32); with
    ``label_smoothing`` e the target puts 1 - e on the label and e spread evenly over all classes."""
    n_classes = logits.shape[-1]
    per_position = F.cross_entropy(logits.float().reshape(-1, n_classes), targets.reshape(-1),
                                   reduction="none", label_smoothing=label_smoothing)  # (B * prod(shape),)
    return _masked_mean(per_position.view(targets.shape), mask)


def _stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0: positive, monotone, linear growth (no exp)."""
    return torch.where(x >= 0, x + 1.0, 1.0 / (1.0 - torch.minimum(x, torch.zeros_like(x))))


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of stablemax(x)_i = s(x_i) / sum_j s(x_j) (Prieto et al. 2025; used by TRM and FPRM)."""
    s = _stablemax_s(logits)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stablemax cross-entropy averaged over masked positions.

    Computed in float64 like TRM's ``stablemax_cross_entropy``: stablemax has no exponential, so
    probabilities of confident predictions approach 1 slowly and need the extra precision.
    """
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)  # (B, *shape, C)
    picked = torch.gather(logprobs, -1, targets.unsqueeze(-1)).squeeze(-1)  # (B, *shape)
    return _masked_mean(-picked, mask).to(torch.float32)


def square_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each class c > 0: cross-entropy of a softmax over the masked positions of class c's
    logit, against the position(s) whose target is c; averaged over the instances that hold c and
    over classes. Tasks whose answer is "which square" per class (chess: from, to) train what their
    decoder reads; class 0 (none) gets no term of its own."""
    b, n_classes = logits.shape[0], logits.shape[-1]
    flat = logits.float().reshape(b, -1, n_classes)  # (B, T, C)
    target, allowed = targets.reshape(b, -1), mask.reshape(b, -1)
    terms = []
    for c in range(1, n_classes):
        holds = (target == c) & allowed  # (B, T)
        present = holds.any(1)
        if not present.any():
            continue
        logp = flat[..., c].masked_fill(~allowed, float("-inf")).log_softmax(-1)
        picked = torch.where(holds, logp, torch.zeros_like(logp)).sum(1) / holds.sum(1).clamp_min(1)
        terms.append(-picked[present].mean())
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


LOSSES: dict[str, LossFn] = {
    "ce": masked_cross_entropy,
    "stablemax": stablemax_cross_entropy,
    "squares": square_cross_entropy,
}


def get_loss(name: str, label_smoothing: float = 0.0) -> LossFn:
    """The loss registered under ``name`` (see LOSSES), with ``label_smoothing`` (ce only)."""
    try:
        loss_fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"train.loss: got {name!r}, expected one of {sorted(LOSSES)}") from None
    if not label_smoothing:
        return loss_fn
    if loss_fn is not masked_cross_entropy:
        raise ValueError(f"train.label_smoothing: only the 'ce' loss takes it, got loss {name!r}")
    return functools.partial(masked_cross_entropy, label_smoothing=label_smoothing)
