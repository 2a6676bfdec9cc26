"""Mazes (Deep Thinking, Schwarzschild et al. 2021; Maze-Hard in HRM/TRM/FPRM): mark the path.

Grid convention: `size` = S, the odd side of an S×S wall/cell grid holding c = (S - 1) / 2 cells per
side. Cells sit at odd coordinates (1, 3, ..., S - 2); the position between two neighbouring cells is
the corridor/wall between them; positions with two even coordinates are always wall, and row/column
0 and S - 1 are always wall, so that outer ring is the border (no extra padding is added). Example:
S = 9 gives 4×4 cells on a 9×9 grid.

Mazes are perfect (exactly one path between any two cells): a randomized depth-first backtracker,
as in Deep Thinking, started from a random origin cell. The start and goal are two distinct cells
drawn uniformly and independently of the origin.

Encoding: `inputs` (N, S, S) int64 tokens WALL=0, OPEN=1, START=2, GOAL=3 (vocab 4, the same at
every size); `targets` (N, S, S) int64, 1 on every grid position of the start→goal path (start,
goal, the cells between and the corridors joining them), 0 elsewhere; `mask` all True (walls count
too: the model must learn to leave them off the path). meta: `path_len` = number of grid positions
on the path, `size` = S.

Sizes: train 9, OOD (13, 17, 25, 33) by default; the cluster ladder `CLUSTER_OOD_SIZES` adds 59 and
101 (DT tests 59×59 and larger).

Generation is vectorised over the batch: all N mazes advance their DFS stacks together in lockstep
(one push or pop per maze per step), and the path is read off the DFS tree by walking start and goal
up to their lowest common ancestor, again for the whole batch at once.
"""
from __future__ import annotations

import numpy as np

from fpr_core.tasks.base import Task, TaskData

WALL, OPEN, START, GOAL = 0, 1, 2, 3
"""Input tokens."""
CLUSTER_OOD_SIZES = (13, 17, 25, 33, 59, 101)
"""OOD ladder for cluster sweeps (default_ood_sizes plus 59 and 101)."""


def cell_neighbours(c: int) -> np.ndarray:
    """(c*c, 4) int64: neighbour cell id up, down, left, right of each cell, -1 off the grid."""
    r, col = np.divmod(np.arange(c * c), c)
    ids = np.arange(c * c)
    return np.stack([np.where(r > 0, ids - c, -1), np.where(r < c - 1, ids + c, -1),
                     np.where(col > 0, ids - 1, -1), np.where(col < c - 1, ids + 1, -1)], axis=1)


def dfs_trees(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Randomized DFS spanning trees of n c×c cell grids, all advanced in lockstep.

    Returns parent (N, c*c) (-1 at each root) and depth (N, c*c) of every cell in its tree.
    """
    cells = c * c
    neighbours = cell_neighbours(c)
    rows = np.arange(n)
    visited = np.zeros((n, cells), dtype=bool)
    stack = np.zeros((n, cells), dtype=np.int64)
    parent = np.full((n, cells), -1, dtype=np.int64)
    depth = np.zeros((n, cells), dtype=np.int64)
    origin = rng.integers(0, cells, size=n)
    stack[:, 0] = origin
    visited[rows, origin] = True
    top_index = np.zeros(n, dtype=np.int64)  # stack pointer - 1
    to_visit = np.full(n, cells - 1, dtype=np.int64)
    while to_visit.any():
        active = to_visit > 0
        top = stack[rows, top_index]  # (N,)
        nb = neighbours[top]  # (N, 4)
        free = (nb >= 0) & ~visited[rows[:, None], np.maximum(nb, 0)]
        scores = np.where(free, rng.random((n, 4)), -1.0)
        step = nb[rows, scores.argmax(axis=1)]  # random free neighbour
        push = active & free.any(axis=1)
        pop = active & ~push
        i, j = rows[push], step[push]
        visited[i, j] = True
        parent[i, j] = top[push]
        depth[i, j] = depth[i, top[push]] + 1
        top_index[push] += 1
        stack[i, top_index[push]] = j
        top_index[pop] -= 1
        to_visit[push] -= 1
    return parent, depth


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


def tree_paths(parent: np.ndarray, depth: np.ndarray, start: np.ndarray, goal: np.ndarray,
               c: int) -> np.ndarray:
    """(N, S, S) int64 masks of the tree path start→goal (cells and corridors) for every maze.

    Walks both ends up towards the root, always moving the deeper one, until they meet at the
    lowest common ancestor; each move marks the cell it leaves and the corridor to its parent.
    """
    n = parent.shape[0]
    size = 2 * c + 1
    rows = np.arange(n)
    path = np.zeros((n, size, size), dtype=np.int64)
    u, v = start.copy(), goal.copy()
    while True:
        apart = u != v
        if not apart.any():
            break
        du, dv = depth[rows, u], depth[rows, v]
        for end, moves in ((u, apart & (du >= dv)), (v, apart & (dv >= du))):
            i, cell = rows[moves], end[moves]
            up = parent[i, cell]
            cr, cc = _grid_coords(cell, c)
            pr, pc = _grid_coords(up, c)
            path[i, cr, cc] = 1
            path[i, (cr + pr) // 2, (cc + pc) // 2] = 1
            end[moves] = up
    mr, mc = _grid_coords(u, c)
    path[rows, mr, mc] = 1
    return path


class Mazes(Task):
    """Perfect mazes -> the mask of the unique start→goal path; exact match checked by the rules."""

    name = "mazes"
    grid = True
    version = "1"
    default_train_size = 9
    default_ood_sizes = (13, 17, 25, 33)
    difficulty_key = "path_len"

    def __init__(self, **params) -> None:
        if params:
            raise ValueError(f"task 'mazes': unknown parameter(s) {sorted(params)}; it takes none")
        super().__init__()

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
        parent, depth = dfs_trees(rng, n, c)
        start = rng.integers(0, c * c, size=n)
        goal = (start + rng.integers(1, c * c, size=n)) % (c * c)  # distinct from start
        inputs = carve(parent, c)
        rows = np.arange(n)
        inputs[(rows, *_grid_coords(start, c))] = START
        inputs[(rows, *_grid_coords(goal, c))] = GOAL
        targets = tree_paths(parent, depth, start, goal, c)
        meta = {"path_len": targets.sum(axis=(1, 2)), "size": np.full(n, size, dtype=np.int64)}
        return TaskData(inputs, targets, np.ones(inputs.shape, dtype=bool), meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) True where the predicted 1s form a simple path start→goal through open cells only.

        Checked by the rules: every marked position is open (not wall), start and goal are marked
        and have exactly one marked 4-neighbour, every other marked position exactly two, and the
        walk from start along marked positions reaches goal after visiting all of them (connected,
        so no extra loops). In a perfect maze that path is the unique one.
        """
        predictions = np.asarray(predictions)
        inputs = data.inputs
        if predictions.shape != inputs.shape:
            raise ValueError(f"task 'mazes': predictions shape {predictions.shape}, "
                             f"expected {inputs.shape}")
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
