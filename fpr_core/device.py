"""Run-time device choice and mixed precision (never hard-code a device in library code)."""
from __future__ import annotations

import contextlib

import torch


def select_device(pref: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA if available else CPU; any other value is passed to ``torch.device``."""
    if isinstance(pref, torch.device):
        return pref
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: got {pref!r}, but CUDA is not available on this machine")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU bf16 is slow and changes the numerics)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
