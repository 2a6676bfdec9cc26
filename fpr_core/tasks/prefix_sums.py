"""Prefix sums (Deep Thinking; Schwarzschild et al. 2021): running parity of a bit string.

Encoding: `inputs` (N, L) int64 bits in {0, 1}, uniform and independent; `targets` (N, L) with
`targets[:, t] = (inputs[:, 0] + ... + inputs[:, t]) mod 2`; `mask` all True. `size` = L, the string
length; vocab = classes = 2. The token layout is the same at every length, so one set of weights
runs on any L. DT trains at 32 bits and tests up to 512 (REFERENCES.md).
"""
from __future__ import annotations

import numpy as np

from fpr_core.tasks.base import Task, TaskData


def running_parity(bits: np.ndarray) -> np.ndarray:
    """(N, L) bits -> (N, L) parity of every prefix, int64."""
    return np.cumsum(bits, axis=1, dtype=np.int64) % 2


class PrefixSums(Task):
    """Bit strings -> running parity at every position; exact match per string."""

    name = "prefix_sums"
    grid = False
    version = "1"
    default_train_size = 32
    default_ood_sizes = (64, 128, 256, 512)
    difficulty_key = "length"

    @property
    def vocab_size(self) -> int:
        return 2

    @property
    def n_classes(self) -> int:
        return 2

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n uniform random strings of `size` bits with their running parity."""
        if size < 1:
            raise ValueError(f"task 'prefix_sums': size (string length) must be >= 1, got {size}")
        rng = np.random.default_rng(seed)
        bits = rng.integers(0, 2, size=(n, size), dtype=np.int64)  # (N, L)
        meta = {"length": np.full(n, size, dtype=np.int64),
                "n_ones": bits.sum(axis=1, dtype=np.int64)}
        return TaskData(bits, running_parity(bits), np.ones((n, size), dtype=bool), meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) True where every predicted parity equals the parity recomputed from the input."""
        predictions = np.asarray(predictions)
        if predictions.shape != data.inputs.shape:
            raise ValueError(f"task 'prefix_sums': predictions shape {predictions.shape}, "
                             f"expected {data.inputs.shape}")
        return (predictions == running_parity(data.inputs)).all(axis=1)
