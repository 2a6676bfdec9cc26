"""Mazes (Deep Thinking, Schwarzschild et al. 2021; Maze-Hard in HRM/TRM/FPRM): mark the path.

Grid convention: `size` = S, the odd side of an S×S wall/cell grid holding c = (S - 1) / 2 cells per
side. Cells sit at odd coordinates (1, 3, ..., S - 2); the position between two neighbouring cells is
the corridor/wall between them; positions with two even coordinates are always wall, and row/column
0 and S - 1 are always wall, so that outer ring is the border (no extra padding is added). Example:
S = 9 gives 4×4 cells on a 9×9 grid.

Mazes are perfect (exactly one path between any two cells): a randomized depth-first backtracker,
as in Deep Thinking, started from a random origin cell. The start and goal are two distinct cells
drawn uniformly and independently of the origin.

Size convention next to Deep Thinking's (easy-to-hard-data): DT's maze "size n" has (n + 1) / 2
cells per side drawn on a larger image (their "9" is a 24×24 image of 5×5 cells, their "59" holds
30×30 cells); ours has (S - 1) / 2. So our S holds one cell per side fewer than DT's n = S: our 9 is
4×4 cells, our 11 matches DT's "9", and our 61 matches DT's "59". Our tokens are one per grid
position (no pixel upscaling).

Encoding: `inputs` (N, S, S) int64 tokens WALL=0, OPEN=1, START=2, GOAL=3 (vocab 4, the same at
every size); `targets` (N, S, S) int64, 1 on every grid position of the start→goal path (start,
goal, the cells between and the corridors joining them), 0 elsewhere. `mask` depends on the task
parameter `loss_mask`:
  - "all" (default): every position counts (walls too: the model must learn to leave them off);
  - "open": Deep Thinking's mask, walls excluded from the loss and from token accuracy; as in DT's
    evaluation (predictions multiplied by the open-cell mask), `verify` then reads wall positions
    as unmarked, so a model is never asked about walls at all.

Difficulty metadata (N,) per maze:
  - `deadend_depth` (the difficulty key): rounds of parallel dead-end filling, the depth of the
    local algorithm a conv-like loop can run: each round removes every open position other than
    start and goal with at most one open 4-neighbour, until none is left (the path remains). It
    grows about as S^1.9 (mean ~12 at 9, ~160 at 33, ~450 at 59), hence the quadratic cap law;
  - `bfs_distance`: BFS start→goal distance in grid steps (= path_len - 1 in a perfect maze);
  - `path_len`: grid positions on the path; `size`: S.

Sizes: train 9, OOD (13, 17, 25, 33) by default; the cluster ladder `CLUSTER_OOD_SIZES` adds 59 and
101 (DT tests 59×59 and larger). Eval cap law: quadratic in S (`cap_law`).

Generation: the depth-first backtracker runs in one compiled numba kernel over the batch, reading
pre-drawn uniforms (all randomness comes from the seeded numpy Generator). Carving and the path
are whole-batch numpy operations: the path is read off the DFS tree with its enter/leave times
(x is an ancestor of y iff x's interval contains y's), so no per-maze Python loop remains. A numpy
lockstep DFS (all mazes pushing/popping together, 2·c² steps) was measured first and was bound by
per-step overhead: 0.19 s for 32 mazes and 0.56 s for 256 at 101×101, no faster than
reasoning-gym's pure-Python generator (see benchmarks/bench_task_generation.py).
"""
from __future__ import annotations

import numpy as np
from fpr_core.tasks.jit import njit

from fpr_core.tasks.base import Task, TaskData

WALL, OPEN, START, GOAL = 0, 1, 2, 3
"""Input tokens."""
LOSS_MASKS = ("all", "open")
"""Values of the `loss_mask` parameter: every position, or open positions only (Deep Thinking)."""
CLUSTER_OOD_SIZES = (13, 17, 25, 33, 59, 101)
"""OOD ladder for cluster sweeps (default_ood_sizes plus 59 and 101)."""


def cell_neighbours(c: int) -> np.ndarray:
    """(c*c, 4) int64: neighbour cell id up, down, left, right of each cell, -1 off the grid."""
    r, col = np.divmod(np.arange(c * c), c)
    ids = np.arange(c * c)
    return np.stack([np.where(r > 0, ids - c, -1), np.where(r < c - 1, ids + c, -1),
                     np.where(col > 0, ids - 1, -1), np.where(col < c - 1, ids + 1, -1)], axis=1)


@njit(cache=True)
def _dfs_kernel(neighbours, origin, choice, parent, enter, leave):  # pragma: no cover (compiled)
    """Randomized depth-first backtracker on each maze; fills parent, enter and leave times.

    choice (N, cells) holds pre-drawn uniforms in [0, 1): push k of maze b takes free neighbour
    floor(choice[b, k] * n_free), so the kernel draws no randomness of its own.
    """
    n, cells = parent.shape
    stack = np.empty(cells, np.int64)
    visited = np.empty(cells, np.bool_)
    free = np.empty(4, np.int64)
    for b in range(n):
        visited[:] = False
        root = origin[b]
        visited[root] = True
        parent[b, root] = -1
        enter[b, root] = 0
        stack[0] = root
        top_index, clock, pushes = 0, 0, 0
        while top_index >= 0:
            top = stack[top_index]
            n_free = 0
            for d in range(4):
                nb = neighbours[top, d]
                if nb >= 0 and not visited[nb]:
                    free[n_free] = nb
                    n_free += 1
            clock += 1
            if n_free == 0:  # dead end: backtrack
                leave[b, top] = clock
                top_index -= 1
                continue
            nxt = free[int(choice[b, pushes] * n_free)]
            pushes += 1
            visited[nxt] = True
            parent[b, nxt] = top
            enter[b, nxt] = clock
            top_index += 1
            stack[top_index] = nxt


def deadend_depth(inputs: np.ndarray) -> np.ndarray:
    """(N, S, S) maze tokens -> (N,) int64 rounds of parallel dead-end filling (module docstring).

    Whole-batch numpy: every round recounts open 4-neighbours and fills all current dead ends at
    once, so the number of rounds is the depth of the deepest branch hanging off the path.
    """
    open_ = inputs != WALL  # (N, S, S); the border ring is wall, so rolls never wrap into open cells
    keep = (inputs == START) | (inputs == GOAL)
    rounds = np.zeros(len(inputs), np.int64)
    while True:
        degree = (np.roll(open_, 1, 1).astype(np.int8) + np.roll(open_, -1, 1)
                  + np.roll(open_, 1, 2) + np.roll(open_, -1, 2))
        dead = open_ & ~keep & (degree <= 1)
        active = dead.any(axis=(1, 2))
        if not active.any():
            return rounds
        rounds += active
        open_ &= ~dead


def dfs_trees(rng: np.random.Generator, n: int, c: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomized DFS spanning trees of n c×c cell grids, each from a random origin cell.

    Returns parent (N, c*c) (-1 at the root) and the DFS enter / leave times (N, c*c) of every
    cell: x is an ancestor-or-self of y iff enter[x] <= enter[y] and leave[y] <= leave[x].
    """
    cells = c * c
    origin = rng.integers(0, cells, size=n)
    choice = rng.random((n, max(cells - 1, 1)))
    parent = np.empty((n, cells), dtype=np.int64)
    enter = np.empty((n, cells), dtype=np.int64)
    leave = np.empty((n, cells), dtype=np.int64)
    _dfs_kernel(cell_neighbours(c), origin, choice, parent, enter, leave)
    return parent, enter, leave


def _grid_coords(cell: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    r, col = np.divmod(cell, c)
    return 2 * r + 1, 2 * col + 1


def carve(parent: np.ndarray, c: int) -> np.ndarray:
    """(N, S, S) int64 grids: all cells and the corridor from every cell to its tree parent open."""
    n = parent.shape[0]
    size = 2 * c + 1
    grid = np.full((n, size, size), WALL, dtype=np.int64)
    grid[:, 1::2, 1::2] = OPEN
    i, child = np.nonzero(parent >= 0)
    cr, cc = _grid_coords(child, c)
    pr, pc = _grid_coords(parent[i, child], c)
    grid[i, (cr + pr) // 2, (cc + pc) // 2] = OPEN
    return grid


def tree_paths(parent: np.ndarray, enter: np.ndarray, leave: np.ndarray, start: np.ndarray,
               goal: np.ndarray, c: int) -> np.ndarray:
    """(N, S, S) int64 masks of the tree path start→goal (cells and corridors) for every maze.

    The path is every cell that is an ancestor-or-self of exactly one of start and goal (each with
    the corridor to its parent), plus their lowest common ancestor: the deepest cell that is an
    ancestor of both, i.e. the common ancestor entered last. Whole-batch array operations.
    """
    n = parent.shape[0]
    size = 2 * c + 1
    rows = np.arange(n)[:, None]

    def ancestors_of(cell):  # (N, cells) bool
        return (enter <= enter[rows, cell[:, None]]) & (leave[rows, cell[:, None]] <= leave)

    from_start, from_goal = ancestors_of(start), ancestors_of(goal)
    below_lca = from_start ^ from_goal
    lca = np.where(from_start & from_goal, enter, -1).argmax(axis=1)  # (N,)
    path = np.zeros((n, size, size), dtype=np.int64)
    i, cell = np.nonzero(below_lca)
    cr, cc = _grid_coords(cell, c)
    pr, pc = _grid_coords(parent[i, cell], c)
    path[i, cr, cc] = 1
    path[i, (cr + pr) // 2, (cc + pc) // 2] = 1
    path[(np.arange(n), *_grid_coords(lca, c))] = 1
    return path


class Mazes(Task):
    """Perfect mazes -> the mask of the unique start→goal path; exact match checked by the rules."""

    name = "mazes"
    grid = True
    version = "3"
    default_train_size = 9
    default_ood_sizes = (13, 17, 25, 33)
    difficulty_key = "deadend_depth"
    cap_law = "quadratic"
    accepted_params = ("loss_mask",)

    def __init__(self, loss_mask: str = "all", **params) -> None:
        super().__init__(**params)  # rejects unknown parameters
        if loss_mask not in LOSS_MASKS:
            raise ValueError(f"task 'mazes': loss_mask must be one of {list(LOSS_MASKS)}, "
                             f"got {loss_mask!r}")
        self.loss_mask = loss_mask
        self.params = {} if loss_mask == "all" else {"loss_mask": loss_mask}  # default: old cache keys

    @property
    def vocab_size(self) -> int:
        return 4

    @property
    def n_classes(self) -> int:
        return 2

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n perfect mazes on a size×size grid (size odd, >= 5) with their path masks."""
        if size < 5 or size % 2 == 0:
            raise ValueError(f"task 'mazes': size (grid side) must be odd and >= 5, got {size}")
        c = (size - 1) // 2
        rng = np.random.default_rng(seed)
        parent, enter, leave = dfs_trees(rng, n, c)
        start = rng.integers(0, c * c, size=n)
        goal = (start + rng.integers(1, c * c, size=n)) % (c * c)  # distinct from start
        inputs = carve(parent, c)
        rows = np.arange(n)
        inputs[(rows, *_grid_coords(start, c))] = START
        inputs[(rows, *_grid_coords(goal, c))] = GOAL
        targets = tree_paths(parent, enter, leave, start, goal, c)
        path_len = targets.sum(axis=(1, 2))
        meta = {"deadend_depth": deadend_depth(inputs), "bfs_distance": path_len - 1,
                "path_len": path_len, "size": np.full(n, size, dtype=np.int64)}
        mask = inputs != WALL if self.loss_mask == "open" else np.ones(inputs.shape, dtype=bool)
        return TaskData(inputs, targets, mask, meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) True where the predicted 1s form a simple path start→goal through open cells only.

        Checked by the rules: every marked position is open (not wall), start and goal are marked
        and have exactly one marked 4-neighbour, every other marked position exactly two, and the
        walk from start along marked positions reaches goal after visiting all of them (connected,
        so no extra loops). In a perfect maze that path is the unique one. With loss_mask="open"
        wall positions are read as unmarked (Deep Thinking masks predictions to open cells).
        """
        predictions = np.asarray(predictions)
        inputs = data.inputs
        if predictions.shape != inputs.shape:
            raise ValueError(f"task 'mazes': predictions shape {predictions.shape}, "
                             f"expected {inputs.shape}")
        if self.loss_mask == "open":  # DT: predictions multiplied by the open-cell mask
            predictions = np.where(inputs == WALL, 0, predictions)
        n, h, w = inputs.shape
        marked = np.pad(predictions == 1, ((0, 0), (1, 1), (1, 1))).reshape(n, -1)  # (N, P)
        tokens = np.pad(inputs, ((0, 0), (1, 1), (1, 1))).reshape(n, -1)  # pad = WALL
        width = w + 2
        ok = np.isin(predictions, (0, 1)).all(axis=(1, 2))
        ok &= ~(marked & (tokens == WALL)).any(axis=1)
        ok &= ((tokens == START).sum(1) == 1) & ((tokens == GOAL).sum(1) == 1)
        start, goal = (tokens == START).argmax(1), (tokens == GOAL).argmax(1)
        offsets = np.array([-width, width, -1, 1])
        degree = np.zeros_like(marked, dtype=np.int64)
        inner = np.arange(width, marked.shape[1] - width)  # never the padded first/last row
        for off in offsets:
            degree[:, inner] += marked[:, inner + off]
        rows = np.arange(n)
        ends = np.zeros_like(marked)
        ends[rows, start] = ends[rows, goal] = True
        ok &= marked[rows, start] & marked[rows, goal]
        ok &= (degree[rows, start] == 1) & (degree[rows, goal] == 1)
        ok &= ~(marked & ~ends & (degree != 2)).any(axis=1)
        return ok & self._walk_reaches_goal(marked, start, goal, offsets, ok)

    @staticmethod
    def _walk_reaches_goal(marked: np.ndarray, start: np.ndarray, goal: np.ndarray,
                           offsets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Follow marked positions from start (degrees already checked); True if the walk reaches
        goal having visited every marked position, i.e. the marked set is one path."""
        n = marked.shape[0]
        rows = np.arange(n)
        count = marked.sum(axis=1)
        cur, prev = start.copy(), np.full(n, -1)
        visited = np.ones(n, dtype=np.int64)
        for _ in range(int(count[candidates].max(initial=0))):
            moving = candidates & (cur != goal)
            if not moving.any():
                break
            nbrs = cur[:, None] + offsets  # (N, 4)
            nxt = marked[rows[:, None], nbrs] & (nbrs != prev[:, None])
            step = nbrs[rows, nxt.argmax(axis=1)]
            moving &= nxt.any(axis=1)
            prev = np.where(moving, cur, prev)
            cur = np.where(moving, step, cur)
            visited += moving
        return candidates & (cur == goal) & (visited == count)
