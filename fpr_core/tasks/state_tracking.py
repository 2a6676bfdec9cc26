"""State tracking word problems (Merrill et al. 2024, "The Illusion of State").

A word is a sequence of group elements g_1 ... g_L; the label at position t is the running product
p_t = g_1 · g_2 · ... · g_t. Tracking it needs depth growing with L for fixed-depth transformers on
non-solvable groups (S5, A5), while a looped model can track it at any length; Z60 is the abelian
control of the same order as A5.

Groups, each enumerated once as permutations (so products are computed by composing arrays):
  - "S5": all 120 permutations of {0..4}, in lexicographic order (id 0 = identity);
  - "A5": the 60 even permutations of {0..4}, in lexicographic order (id 0 = identity);
  - "Z60": the integers mod 60, element k acting as the cyclic shift i -> (i + k) mod 60.
Product convention: `a · b` means "apply a, then b", i.e. as arrays (a · b)[i] = b[a[i]].

Alphabet (task parameter `alphabet`), the letters g_t are drawn from uniformly:
  - "group" (default): every element of the group (the GPU study's uniform S5/A5);
  - "generators": a generating set with the identity, `GENERATORS[group]`: for S5
    {e, (01), (01234)}, for A5 {e, (012), (01234)}, for Z60 {0, 1}. The prefix products still range
    over the whole group (a transposition and a 5-cycle generate S5, so the word problem stays
    NC1-complete), but the model has 3 letters to learn instead of 120: the CPU profile.

Encoding: `inputs` (N, L) int64 element ids of the letters; `targets` (N, L) int64 ids of p_t;
`mask` all True. `size` = L. vocab = n_classes = group order (a generator alphabet uses only a few
input ids). Causal by nature (p_t depends on g_1..g_t only), so profiles run it with causal mixing
(model.causal). Trained at 16-32, tested at 2x-8x the length; the eval cap law is linear in L.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import permutations

import numpy as np

from fpr_core.tasks.base import Task, TaskData

GROUPS = ("S5", "A5", "Z60")
"""Valid values of the `group` parameter."""
ALPHABETS = ("group", "generators")
"""Valid values of the `alphabet` parameter."""
GENERATORS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S5": ((0, 1, 2, 3, 4), (1, 0, 2, 3, 4), (1, 2, 3, 4, 0)),    # e, (01), (01234)
    "A5": ((0, 1, 2, 3, 4), (1, 2, 0, 3, 4), (1, 2, 3, 4, 0)),    # e, (012), (01234)
    "Z60": (tuple(range(60)), tuple((i + 1) % 60 for i in range(60))),  # 0, 1
}
"""Generating sets (with the identity) as permutation arrays i -> perm[i], for alphabet='generators'."""


def _is_even(perm: tuple[int, ...]) -> bool:
    inversions = sum(perm[i] > perm[j] for i in range(len(perm)) for j in range(i + 1, len(perm)))
    return inversions % 2 == 0


@lru_cache(maxsize=None)
def group_elements(group: str) -> np.ndarray:
    """(order, degree) int64: element id -> the permutation it acts as (row 0 is the identity)."""
    if group == "S5":
        perms = list(permutations(range(5)))
    elif group == "A5":
        perms = [p for p in permutations(range(5)) if _is_even(p)]
    elif group == "Z60":
        perms = [tuple((i + k) % 60 for i in range(60)) for k in range(60)]
    else:
        raise ValueError(f"task 'state_tracking': unknown group {group!r}; expected one of "
                         f"{list(GROUPS)}")
    elements = np.array(perms, dtype=np.int64)
    elements.setflags(write=False)
    return elements


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Permutation arrays (..., d): a · b = apply a, then b; (a · b)[i] = b[a[i]]."""
    return np.take_along_axis(b, a, axis=-1)


@lru_cache(maxsize=None)
def product_table(group: str) -> np.ndarray:
    """(order, order) int64: table[a, b] = id of a · b, built by composing the permutations."""
    elements = group_elements(group)
    order, degree = elements.shape
    index = {row.tobytes(): i for i, row in enumerate(elements)}
    products = compose(np.repeat(elements, order, axis=0), np.tile(elements, (order, 1)))
    table = np.array([index[row.tobytes()] for row in products], dtype=np.int64)
    table = table.reshape(order, order)
    table.setflags(write=False)
    return table


def generator_ids(group: str) -> np.ndarray:
    """(k,) int64 element ids of GENERATORS[group] (identity first)."""
    index = {row.tobytes(): i for i, row in enumerate(group_elements(group))}
    return np.array([index[np.array(p, np.int64).tobytes()] for p in GENERATORS[group]], np.int64)


def running_products(words: np.ndarray, group: str) -> np.ndarray:
    """(N, L) element ids -> (N, L) ids of the prefix products, via the product table."""
    table = product_table(group)
    out = np.empty_like(words)
    state = words[:, 0]
    out[:, 0] = state
    for t in range(1, words.shape[1]):
        state = table[state, words[:, t]]
        out[:, t] = state
    return out


class StateTracking(Task):
    """Group word problems: element ids -> running product id at every position."""

    name = "state_tracking"
    grid = False
    version = "1"
    default_train_size = 32
    default_ood_sizes = (64, 128, 256)
    difficulty_key = "length"
    cap_law = "linear"

    accepted_params = ("group", "alphabet")

    def __init__(self, group: str = "S5", alphabet: str = "group", **params) -> None:
        super().__init__(**params)  # rejects unknown parameters
        if group not in GROUPS:
            raise ValueError(f"task 'state_tracking': group must be one of {list(GROUPS)}, "
                             f"got {group!r}")
        if alphabet not in ALPHABETS:
            raise ValueError(f"task 'state_tracking': alphabet must be one of {list(ALPHABETS)}, "
                             f"got {alphabet!r}")
        # the default alphabet stays out of params so existing cache keys and rows keep their value
        self.params = {"group": group} if alphabet == "group" else {"group": group, "alphabet": alphabet}
        self.group, self.alphabet = group, alphabet
        self.order = int(group_elements(group).shape[0])
        self.letters = (np.arange(self.order, dtype=np.int64) if alphabet == "group"
                        else generator_ids(group))

    @property
    def vocab_size(self) -> int:
        return self.order

    @property
    def n_classes(self) -> int:
        return self.order

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n words of `size` letters drawn uniformly from the alphabet, with their running products."""
        if size < 1:
            raise ValueError(f"task 'state_tracking': size (word length) must be >= 1, got {size}")
        rng = np.random.default_rng(seed)
        words = self.letters[rng.integers(0, len(self.letters), size=(n, size))]  # (N, L)
        meta = {"length": np.full(n, size, dtype=np.int64)}
        return TaskData(words, running_products(words, self.group),
                        np.ones((n, size), dtype=bool), meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) True where every predicted id is the product of the prefix, by composing perms."""
        predictions = np.asarray(predictions)
        if predictions.shape != data.inputs.shape:
            raise ValueError(f"task 'state_tracking': predictions shape {predictions.shape}, "
                             f"expected {data.inputs.shape}")
        elements = group_elements(self.group)
        in_range = ((predictions >= 0) & (predictions < self.order)).all(axis=1)
        predicted = elements[np.clip(predictions, 0, self.order - 1)]  # (N, L, d)
        ok = in_range.copy()
        state = elements[data.inputs[:, 0]]  # (N, d)
        ok &= (predicted[:, 0] == state).all(axis=1)
        for t in range(1, data.inputs.shape[1]):
            state = compose(state, elements[data.inputs[:, t]])
            ok &= (predicted[:, t] == state).all(axis=1)
        return ok
