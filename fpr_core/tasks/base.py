"""The task interface every task family implements (one file per task in this package).

Every task is token-in, token-out with the same shape: the model reads `inputs` (N, L) for
sequences or (N, H, W) for grids and predicts one class per position; `targets` has the same shape
and `mask` says which positions count in the loss and in token accuracy. Exact accuracy never trusts
the generator alone: it comes from `Task.verify`, which checks a prediction by the task's rules.

`size` is the task's difficulty knob (documented per task): sequence length for prefix sums and
state tracking, grid side for mazes, blanks for sudoku, mate depth for chess. Larger = harder.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch


@dataclass
class TaskData:
    """A generated split. All arrays share the leading dimension N."""

    inputs: np.ndarray
    """int64 tokens, (N, L) or (N, H, W)."""
    targets: np.ndarray
    """int64 classes, same shape as inputs."""
    mask: np.ndarray
    """bool, same shape as inputs: positions that count in loss / token accuracy."""
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-instance difficulty metadata, each (N,): e.g. length, path_len, rating, givens, depth."""
    size: int = 0
    """The size/difficulty knob this split was generated at."""

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, idx) -> "TaskData":
        return TaskData(self.inputs[idx], self.targets[idx], self.mask[idx],
                        {k: v[idx] for k, v in self.meta.items()}, self.size)


class Task(ABC):
    """A procedurally generated reasoning task, deterministic in its seed."""

    name: ClassVar[str]
    """Registry name used in sweep specs (e.g. 'prefix_sums')."""
    grid: ClassVar[bool]
    """True if inputs are 2-D grids (N, H, W); False for sequences (N, L)."""
    version: ClassVar[str] = "1"
    """Generator version: part of the cache key; bump when the generator's output changes."""
    default_train_size: ClassVar[int]
    default_ood_sizes: ClassVar[tuple[int, ...]]
    difficulty_key: ClassVar[str]
    """The meta key the report plots iterations against: the quantity the task's algorithm depth
    follows (e.g. 'deadend_depth' for mazes)."""
    cap_law: ClassVar[str] = "linear"
    """How the eval loop cap grows with size on OOD splits when ``solver.eval_cap_law`` is 'task':
    linear | quadratic | fixed (see fpr_core.evaluate.scaled_eval_cap)."""

    accepted_params: ClassVar[tuple[str, ...]] = ()
    """Names of the task's parameters (e.g. ('group',) for state tracking); others are rejected."""

    def __init__(self, **params) -> None:
        """Task-specific parameters (e.g. group='S5' for state tracking); unknown ones raise ValueError."""
        unknown = sorted(set(params) - set(self.accepted_params))
        if unknown:
            expected = f"only {list(self.accepted_params)}" if self.accepted_params else "none"
            raise ValueError(f"task {self.name!r}: unknown parameter(s) {unknown}; it takes {expected}")
        self.params = params

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def n_classes(self) -> int: ...

    @abstractmethod
    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n instances at the given size; identical arrays for identical (params, n, size, seed)."""

    @abstractmethod
    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) bool: is each predicted answer correct by the task's rules."""

    def coordinates(self) -> np.ndarray | None:
        """(T, K) int64 absolute coordinates of the T tokens of the task's one board size (e.g.
        row, column, box), for model.positions='absolute'; None (the default) for tasks whose size
        varies, where absolute positions would not transfer to larger instances."""
        return None

    def board_mask(self) -> np.ndarray | None:
        """(T, T) bool: which tokens each token may attend to under model.attention_mask='board'
        (the task's own relations: sudoku peers, the squares a chess piece can reach); None (the
        default) for tasks without a fixed board."""
        return None

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, *shape, n_classes) -> predicted classes (N, *shape). Default: argmax."""
        return logits.argmax(-1)
