"""Sudoku: fill an n×n grid so every row, column and box holds the digits 1–n once.

Board shapes (task parameter `box`, the box's rows x columns; n = rows * columns):
  - "3x3": the classic 9×9 board (the GPU study);
  - "2x3": 6×6 boards of six 2-row × 3-column boxes (the CPU profile);
  - "2x2": 4×4 boards of four 2×2 boxes (the smallest; tests and smoke runs).
The board never changes size within a task: the OOD axis is fewer givens on the same board, so the
task declares absolute board coordinates (`coordinates`: row, column and box id of every cell) for
model.positions='absolute'. They are legitimate here because the board is fixed, and needed:
relative 2-D offsets alone cannot tell whether two cells share a box.

Encoding (grid task, inputs/targets/mask are (N, n, n)):
- input tokens: 0 = blank, 1–n = a given digit (vocab n + 1);
- target classes: the solution digit minus one, so classes 0–(n-1) stand for digits 1–n;
- mask: every cell. Givens are included on purpose: `verify` demands that a prediction keeps every
  given, so the model must learn to copy them, and HRM/TRM's Sudoku-Extreme labels likewise cover
  all cells. Token accuracy is therefore inflated by the cells that are copies; exact accuracy
  (from `verify`) is the headline metric.

Generation (deterministic in the seed through a private numpy Generator; the numba kernels draw no
random numbers themselves, all randomness is passed in as arrays):
1. a full solution grid by randomised backtracking: cells are filled in row-major order and each
   cell tries the digits in its own random order (not by permuting one base grid, so the grids are
   not restricted to one equivalence class);
2. clues are removed in a random order, each removal kept only if the puzzle still has exactly one
   solution (checked by the bitmask solver below, counting solutions up to 2), until `size` cells
   are blank. If a pass over all cells ends short of `size` blanks, the grid is discarded and a
   new one drawn.

`size` = number of blanks (larger = harder; train on few, test on more). 9×9: train 40, OOD 45, 50,
54, 58. Measured on 9×9 (50 puzzles per size, 10 at 58+): up to 54 blanks the first grid always
works (0.06 ms per puzzle at 40, 0.26 ms at 54); 56 needs 1.2 grids on average, 58 needs 3.9
(2.5 ms per puzzle), 59 needs ~36, and 60 was not reached in 1000 grids: a single random removal
pass ends at a minimal puzzle, which rarely has more than 58 blanks. Mean rating: 0.02 at 40
blanks (naked singles suffice), 0.5 at 45, 3.3 at 50, 26 at 54, 70 at 58. 6×6 (`DEFAULT_SIZES`):
train 10, OOD 14, 18, 22, 24 (share of rating 0, 200 puzzles each: 100% up to 18, 96% at 22, 85%
at 24); 4×4: train 5, OOD 7, 9, 11 (all rating 0).

Why the OOD axis is difficulty at a fixed board size: a larger board needs digits (input tokens and
output classes) the model never saw, and other box geometry, so failure there would measure
vocabulary extrapolation, not reasoning depth. Fewer givens keeps the vocabulary and the geometry
and only lengthens the chain of deductions (and the search the solver needs, recorded as `rating`):
read OOD accuracy stratified by rating, since rating 0 is "the same propagation, run longer" and
rating > 0 needs search that propagation alone cannot do.

Meta per puzzle: `givens`, `blanks` (= size), `rating`, the number of branching nodes (cells
chosen with ≥ 2 candidates) the solver visits while proving uniqueness (choosing the most
constrained cell first, naked singles only: 0 means the puzzle falls to naked singles), and
`propagation_depth` (function `propagation_depth`): rounds of naked singles until solved, every single of a
round filled at once, a round in which no single exists filling the most constrained cell from the
solution (one guess). It is the task's difficulty key (`difficulty_key`): the sudoku analogue of a
maze's dead-end-filling depth, the number of sequential deduction steps a propagating solver needs,
and it varies within a split, where `rating` is 0 for 95-100% of 6×6 puzzles at every blank count
(version 2; version-1 rows carry `rating` as their difficulty).
"""
from __future__ import annotations

import numpy as np
from fpr_core.tasks.jit import njit

from fpr_core.tasks.base import Task, TaskData

BOXES: dict[str, tuple[int, int]] = {"2x2": (2, 2), "2x3": (2, 3), "3x3": (3, 3)}
"""Values of the `box` parameter: rows x columns of one box (the board side is their product)."""
DEFAULT_SIZES: dict[str, tuple[int, tuple[int, ...]]] = {
    "2x2": (5, (7, 9, 11)), "2x3": (10, (14, 18, 22, 24)), "3x3": (40, (45, 50, 54, 58))}
"""(train blanks, OOD blanks) per board shape."""
MIN_GIVENS: dict[tuple[int, int], int] = {(2, 2): 4, (2, 3): 8, (3, 3): 17}
"""Fewest givens of any unique puzzle on each board (known results), so blanks <= cells - this."""

_MAX_ATTEMPTS_PER_PUZZLE = 1000
"""Fresh grids tried for one puzzle before giving up on its blank count."""


@njit(cache=True)
def _popcount(mask):
    count = 0
    while mask:
        mask &= mask - 1
        count += 1
    return count


@njit(cache=True)
def _lowest_digit(bit):
    """The digit (1–n) of a single-bit mask."""
    digit = 1
    while bit > 1:
        bit >>= 1
        digit += 1
    return digit


@njit(cache=True)
def _box_of(cell, n, br, bc):
    r, c = cell // n, cell % n
    return (r // br) * (n // bc) + c // bc


@njit(cache=True)
def _masks_from_grid(grid, row_used, col_used, box_used, n, br, bc):
    """Fill the used-digit masks from `grid` (n*n,); False if a given repeats in a unit."""
    row_used[:] = 0
    col_used[:] = 0
    box_used[:] = 0
    for cell in range(n * n):
        digit = grid[cell]
        if digit == 0:
            continue
        bit = 1 << (digit - 1)
        r, c = cell // n, cell % n
        b = _box_of(cell, n, br, bc)
        if (row_used[r] | col_used[c] | box_used[b]) & bit:
            return False
        row_used[r] |= bit
        col_used[c] |= bit
        box_used[b] |= bit
    return True


@njit(cache=True)
def _count_solutions(puzzle, limit, solution, br, bc):
    """count_solutions on a board of br×bc boxes (n = br*bc); see count_solutions."""
    n = br * bc
    full = (1 << n) - 1
    cells = n * n
    grid = puzzle.copy()
    row_used = np.zeros(n, np.int64)
    col_used = np.zeros(n, np.int64)
    box_used = np.zeros(n, np.int64)
    if not _masks_from_grid(grid, row_used, col_used, box_used, n, br, bc):
        return 0, 0
    stack_cell = np.empty(cells, np.int64)
    stack_left = np.empty(cells, np.int64)  # candidates of that cell not tried yet
    depth = 0
    count = 0
    rating = 0
    while True:
        # Forward: pick the most constrained blank cell.
        best, best_count, best_mask = -1, n + 1, 0
        for cell in range(cells):
            if grid[cell] != 0:
                continue
            r, c = cell // n, cell % n
            b = _box_of(cell, n, br, bc)
            mask = full & ~(row_used[r] | col_used[c] | box_used[b])
            k = _popcount(mask)
            if k < best_count:
                best, best_count, best_mask = cell, k, mask
                if k <= 1:
                    break
        advance = False
        if best == -1:  # no blank left: a solution
            count += 1
            if count == 1:
                solution[:] = grid
            if count >= limit:
                return count, rating
        elif best_count > 0:
            if best_count > 1:
                rating += 1
            stack_cell[depth] = best
            stack_left[depth] = best_mask
            depth += 1
            advance = True
        # Place the next untried candidate at the top of the stack, backtracking as needed.
        if not advance:
            placed = False
            while depth > 0 and not placed:
                cell = stack_cell[depth - 1]
                r, c = cell // n, cell % n
                b = _box_of(cell, n, br, bc)
                if grid[cell] != 0:  # undo the digit tried last
                    bit = 1 << (grid[cell] - 1)
                    row_used[r] ^= bit
                    col_used[c] ^= bit
                    box_used[b] ^= bit
                    grid[cell] = 0
                if stack_left[depth - 1] == 0:
                    depth -= 1
                else:
                    placed = True
            if not placed:
                return count, rating
        cell = stack_cell[depth - 1]
        left = stack_left[depth - 1]
        bit = left & -left
        stack_left[depth - 1] = left ^ bit
        r, c = cell // n, cell % n
        b = _box_of(cell, n, br, bc)
        grid[cell] = _lowest_digit(bit)
        row_used[r] |= bit
        col_used[c] |= bit
        box_used[b] |= bit


def count_solutions(puzzle: np.ndarray, limit: int, solution: np.ndarray,
                    box: tuple[int, int] = (3, 3)) -> tuple[int, int]:
    """Count solutions of `puzzle` (n*n,) int (0 = blank) up to `limit`; box = (rows, cols).

    Iterative backtracking on bitmasks, always branching on the blank cell with the fewest
    candidates. Writes the first solution found into `solution` (n*n,). Returns (count, rating):
    rating = branching nodes visited (cells chosen with >= 2 candidates).
    """
    return _count_solutions(puzzle, limit, solution, box[0], box[1])


@njit(cache=True)
def _random_full_grid(digit_orders, br, bc):
    """A complete valid grid (n*n,) by backtracking in row-major order; cell i tries digits in the
    order `digit_orders[i]` (n*n, n). An exhaustive search from the empty grid, so it always ends
    with a full grid."""
    n = br * bc
    cells = n * n
    grid = np.zeros(cells, np.int64)
    row_used = np.zeros(n, np.int64)
    col_used = np.zeros(n, np.int64)
    box_used = np.zeros(n, np.int64)
    next_try = np.zeros(cells, np.int64)  # index into digit_orders[cell] of the next digit to try
    cell = 0
    while cell < cells:
        r, c = cell // n, cell % n
        b = _box_of(cell, n, br, bc)
        if grid[cell] != 0:  # coming back to this cell: take its digit off
            bit = 1 << (grid[cell] - 1)
            row_used[r] ^= bit
            col_used[c] ^= bit
            box_used[b] ^= bit
            grid[cell] = 0
        used = row_used[r] | col_used[c] | box_used[b]
        placed = False
        while next_try[cell] < n:
            digit = digit_orders[cell, next_try[cell]]
            next_try[cell] += 1
            bit = 1 << (digit - 1)
            if not used & bit:
                grid[cell] = digit
                row_used[r] |= bit
                col_used[c] |= bit
                box_used[b] |= bit
                placed = True
                break
        if placed:
            cell += 1
        else:
            next_try[cell] = 0
            cell -= 1
    return grid


@njit(cache=True)
def _carve(solution, removal_order, blanks, br, bc):
    """Blank cells of `solution` in `removal_order` while the puzzle stays unique, stopping at
    `blanks` blanks. Returns (puzzle (n*n,), rating, ok); ok = False if the pass ended short."""
    puzzle = solution.copy()
    scratch = np.empty(solution.shape[0], np.int64)
    removed = 0
    for cell in removal_order:
        if removed == blanks:
            break
        digit = puzzle[cell]
        puzzle[cell] = 0
        count, _ = _count_solutions(puzzle, 2, scratch, br, bc)
        if count == 1:
            removed += 1
        else:
            puzzle[cell] = digit
    if removed < blanks:
        return puzzle, 0, False
    _, rating = _count_solutions(puzzle, 2, scratch, br, bc)
    return puzzle, rating, True


def make_puzzle(rng: np.random.Generator, blanks: int, box: tuple[int, int] = (3, 3)
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One unique-solution puzzle with exactly `blanks` blanks on a board of `box` boxes.

    Returns (puzzle (n*n,), solution (n*n,), rating, attempts); attempts = grids drawn (1 = no
    restart).
    """
    br, bc = box
    n = br * bc
    most = n * n - MIN_GIVENS[box]
    if not 0 <= blanks <= most:
        raise ValueError(f"sudoku size (blanks) must be in 0..{most} on a {n}x{n} board, got {blanks}")
    for attempt in range(1, _MAX_ATTEMPTS_PER_PUZZLE + 1):
        digit_orders = np.argsort(rng.random((n * n, n)), axis=1) + 1  # (n*n, n) digit permutations
        solution = _random_full_grid(digit_orders, br, bc)
        puzzle, rating, ok = _carve(solution, rng.permutation(n * n), blanks, br, bc)
        if ok:
            return puzzle, solution, int(rating), attempt
    raise RuntimeError(
        f"sudoku: no unique {n}x{n} puzzle with {blanks} blanks after {_MAX_ATTEMPTS_PER_PUZZLE} "
        "grids; use fewer blanks")


def propagation_depth(puzzles: np.ndarray, solutions: np.ndarray, box: tuple[int, int] = (3, 3)) -> np.ndarray:
    """(N,) rounds of naked singles until each puzzle (N, n*n) is solved (0 = blank).

    Each round fills, at once, every blank cell with exactly one candidate. A round with no such
    cell (the puzzle needs search, rating > 0) fills the blank with the fewest candidates from
    `solutions` (N, n*n) and still counts one round. A solved puzzle has depth 0."""
    br, bc = box
    n = br * bc
    grid = np.asarray(puzzles, np.int64).reshape(-1, n * n).copy()
    solutions = np.asarray(solutions, np.int64).reshape(-1, n * n)
    coords = board_coordinates(box)  # (n*n, 3) row, column, box of every cell
    rounds = np.zeros(grid.shape[0], np.int64)
    rows_of = np.arange(grid.shape[0])
    for _ in range(n * n):
        blank = grid == 0  # (N, n*n)
        open_ = blank.any(1)
        if not open_.any():
            break
        onehot = grid[:, :, None] == np.arange(1, n + 1)  # (N, n*n, n)
        used = np.zeros((grid.shape[0], 3, n, n), bool)  # (N, unit kind, unit index, digit)
        for kind in range(3):
            for unit in range(n):
                used[:, kind, unit] = onehot[:, coords[:, kind] == unit].any(1)
        taken = used[:, 0][:, coords[:, 0]] | used[:, 1][:, coords[:, 1]] | used[:, 2][:, coords[:, 2]]
        candidates = ~taken & blank[:, :, None]  # (N, n*n, n)
        count = np.where(blank, candidates.sum(-1), n + 1)
        singles = blank & (count == 1)
        digit = candidates.argmax(-1) + 1
        grid = np.where(singles, digit, grid)
        stuck = open_ & ~singles.any(1)
        if stuck.any():  # no single: one guess, the most constrained cell, from the solution
            cell = count[stuck].argmin(1)
            grid[rows_of[stuck], cell] = solutions[rows_of[stuck], cell]
        rounds += open_
    return rounds


def rules_valid(digits: np.ndarray, box: tuple[int, int] = (3, 3)) -> np.ndarray:
    """(N, n, n) digits -> (N,) bool: every row, column and box is a permutation of 1–n."""
    br, bc = box
    n = br * bc
    onehot = digits[..., None] == np.arange(1, n + 1)  # (N, n, n, n)
    rows_ok = (onehot.sum(axis=2) == 1).all(axis=(1, 2))
    cols_ok = (onehot.sum(axis=1) == 1).all(axis=(1, 2))
    boxes = onehot.reshape(-1, n // br, br, n // bc, bc, n).sum(axis=(2, 4))  # (N, n/br, n/bc, n)
    boxes_ok = (boxes == 1).all(axis=(1, 2, 3))
    return rows_ok & cols_ok & boxes_ok


def board_coordinates(box: tuple[int, int]) -> np.ndarray:
    """(n*n, 3) int64 row, column and box id of every cell in row-major order."""
    br, bc = box
    n = br * bc
    r, c = np.divmod(np.arange(n * n), n)
    return np.stack([r, c, (r // br) * (n // bc) + c // bc], axis=1).astype(np.int64)


class Sudoku(Task):
    """n×n sudoku with a unique solution; size = number of blanks (see module docstring)."""

    name = "sudoku"
    grid = True
    version = "2"  # 2: meta gains propagation_depth, the difficulty key (was rating)
    default_train_size = 40
    default_ood_sizes = (45, 50, 54, 58)
    difficulty_key = "propagation_depth"
    cap_law = "fixed"
    accepted_params = ("box",)

    def __init__(self, box: str = "3x3", **params) -> None:
        super().__init__(**params)  # rejects unknown parameters
        if box not in BOXES:
            raise ValueError(f"task 'sudoku': box must be one of {list(BOXES)}, got {box!r}")
        # the classic board stays out of params so its cache keys and result rows keep their value
        self.params = {} if box == "3x3" else {"box": box}
        self.box = BOXES[box]
        self.side = self.box[0] * self.box[1]
        self.default_train_size, self.default_ood_sizes = DEFAULT_SIZES[box]

    @property
    def vocab_size(self) -> int:
        return self.side + 1

    @property
    def n_classes(self) -> int:
        return self.side

    def coordinates(self) -> np.ndarray:
        """(n*n, 3) row, column and box of every cell (the board never changes size)."""
        return board_coordinates(self.box)

    def board_mask(self) -> np.ndarray:
        """(n*n, n*n) bool: each cell sees its peers (same row, column or box) and itself, the cells
        whose digits constrain it."""
        coords = self.coordinates()  # (T, 3): row, column, box
        return (coords[:, None, :] == coords[None, :, :]).any(-1)

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n puzzles with `size` blanks each; the Generator is seeded by (seed, size) so splits at
        different sizes never share a grid."""
        side = self.side
        rng = np.random.default_rng([seed, size])
        puzzles = np.empty((n, side * side), np.int64)
        solutions = np.empty((n, side * side), np.int64)
        ratings = np.empty(n, np.int64)
        for i in range(n):
            puzzles[i], solutions[i], ratings[i], _ = make_puzzle(rng, size, self.box)
        inputs = puzzles.reshape(n, side, side)
        meta = {"givens": np.full(n, side * side - size, np.int64),
                "blanks": np.full(n, size, np.int64), "rating": ratings,
                "propagation_depth": propagation_depth(puzzles, solutions, self.box)}
        return TaskData(inputs, solutions.reshape(n, side, side) - 1,
                        np.ones((n, side, side), bool), meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """A prediction (N, n, n) of classes 0–(n-1) is correct iff it keeps every given and every
        row, column and box is a permutation of 1–n (checked by the rules, not the stored target)."""
        digits = np.asarray(predictions, dtype=np.int64) + 1  # (N, n, n)
        if digits.shape != data.inputs.shape:
            raise ValueError(f"sudoku predictions must have shape {data.inputs.shape}, got {digits.shape}")
        givens = data.inputs != 0
        keeps_givens = ((digits == data.inputs) | ~givens).all(axis=(1, 2))
        return keeps_givens & rules_valid(digits, self.box)
