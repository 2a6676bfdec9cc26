"""Train / in-distribution / out-of-distribution splits that never share an instance.

`make_splits` generates the training set at `train_size`, a held-out "id" set at the same size and
one "ood_<size>" set per larger size. An instance is identified by a hash of its input tokens (and
their shape); every eval split drops instances already seen in train or in an earlier eval split (or
earlier in itself), and tops itself up from further seeded rounds until it holds `n_eval` instances.
Each split's seeds derive deterministically from (seed, split name, round), so the same call always
returns the same arrays. Train is used as generated (it may repeat an instance, as random training
data does).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from fpr_core.split_names import ID_SPLIT, OOD_PREFIX, TRAIN_SPLIT, eval_split_names, parse_split, split_name  # noqa: F401
from fpr_core.tasks.base import Task, TaskData
from fpr_core.tasks.cache import generate_cached

MAX_ROUNDS = 64
"""Top-up rounds an eval split may take before make_splits declares the instance space too small."""
STALL_ROUNDS = 4
"""Consecutive rounds without a single new instance after which the space counts as exhausted."""

def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived deterministically from `seed` and labels (e.g. split name, round)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def instance_hashes(inputs: np.ndarray) -> list[bytes]:
    """One 16-byte hash per instance of `inputs` (N, ...), covering its shape and int64 tokens."""
    rows = np.ascontiguousarray(inputs, dtype=np.int64).reshape(len(inputs), -1)
    shape = repr(inputs.shape[1:]).encode()
    return [hashlib.blake2b(shape + row.tobytes(), digest_size=16).digest() for row in rows]


def concat(parts: list[TaskData]) -> TaskData:
    """Concatenate splits generated at the same size along N."""
    first = parts[0]
    return TaskData(np.concatenate([p.inputs for p in parts]),
                    np.concatenate([p.targets for p in parts]),
                    np.concatenate([p.mask for p in parts]),
                    {k: np.concatenate([p.meta[k] for p in parts]) for k in first.meta},
                    first.size)


def _fresh_split(task: Task, name: str, size: int, n: int, seed: int, seen: set[bytes],
                 cache_dir) -> TaskData:
    """`n` instances at `size`, none of whose hashes is in `seen` (which is updated)."""
    kept: list[TaskData] = []
    have, stalled = 0, 0
    for rnd in range(MAX_ROUNDS):
        # Round 0 asks for exactly n (the cached common case); top-ups ask for twice what is missing.
        want = n if rnd == 0 else max(2 * (n - have), 64)
        batch = generate_cached(task, want, size, derive_seed(seed, name, rnd),
                                cache_dir if rnd == 0 else False)
        keep = []
        for i, h in enumerate(instance_hashes(batch.inputs)):
            if h not in seen and have + len(keep) < n:
                seen.add(h)
                keep.append(i)
        stalled = 0 if keep else stalled + 1
        if keep:
            kept.append(batch.subset(np.asarray(keep)))
            have += len(keep)
        if have == n:
            return concat(kept)
        if stalled >= STALL_ROUNDS:
            break
    raise ValueError(
        f"make_splits: task {task.name!r} split {name!r} at size {size}: found only {have} of "
        f"{n} instances not already in train or another eval split after {rnd + 1} rounds; the "
        f"instance space is too small at this size: use a larger size, smaller n_train or n_eval")


def make_splits(task: Task, train_size: int | None = None,
                ood_sizes: tuple[int, ...] | None = None, n_train: int = 4096, n_eval: int = 256,
                seed: int = 0, cache_dir: str | os.PathLike | None | bool = None
                ) -> dict[str, TaskData]:
    """Generate {"train", "id", "ood_<size>"...} with every eval instance unseen elsewhere.

    task: a Task (``fpr_core.tasks.make_splits`` also takes a registered name). train_size / ood_sizes default to the
    task's `default_train_size` / `default_ood_sizes`; train and "id" are generated at exactly
    `train_size`. cache_dir: a directory, None for the default cache, False to disable caching.
    Raises ValueError if a split cannot reach n_eval distinct unseen instances.
    """
    train_size = task.default_train_size if train_size is None else int(train_size)
    ood_sizes = task.default_ood_sizes if ood_sizes is None else tuple(int(s) for s in ood_sizes)
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"make_splits: n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    if len(set(ood_sizes)) != len(ood_sizes):
        raise ValueError(f"make_splits: ood_sizes has duplicates: {ood_sizes}")
    train = generate_cached(task, n_train, train_size, derive_seed(seed, "train"), cache_dir)
    seen = set(instance_hashes(train.inputs))
    splits = {TRAIN_SPLIT: train}
    for name, size in zip(eval_split_names(ood_sizes), (train_size, *ood_sizes)):
        splits[name] = _fresh_split(task, name, size, n_eval, seed, seen, cache_dir)
    return splits
