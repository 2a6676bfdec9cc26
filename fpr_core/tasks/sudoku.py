"""Sudoku: fill a 9×9 grid so every row, column and 3×3 box holds the digits 1–9 once.

Encoding (grid task, inputs/targets/mask are (N, 9, 9)):
- input tokens: 0 = blank, 1–9 = a given digit (vocab 10);
- target classes: the solution digit minus one, so classes 0–8 stand for digits 1–9 (9 classes);
- mask: every cell. Givens are included on purpose: `verify` demands that a prediction keeps every
  given, so the model must learn to copy them, and HRM/TRM's Sudoku-Extreme labels likewise cover
  all 81 cells. Token accuracy is therefore inflated by the ~half of the cells that are copies;
  exact accuracy (from `verify`) is the headline metric.

Generation (deterministic in the seed through a private numpy Generator; the numba kernels draw no
random numbers themselves, all randomness is passed in as arrays):
1. a full solution grid by randomised backtracking: cells are filled in row-major order and each
   cell tries the digits in its own random order (not by permuting one base grid, so the grids are
   not restricted to one equivalence class);
2. clues are removed in a random order, each removal kept only if the puzzle still has exactly one
   solution (checked by the bitmask solver below, counting solutions up to 2), until `size` cells
   are blank. If a pass over all 81 cells ends short of `size` blanks, the grid is discarded and a
   new one drawn.

`size` = number of blanks (larger = harder). Training uses 40 blanks (41 givens); OOD uses 45, 50,
54 and 58 blanks. Measured (50 puzzles per size, 10 at 58+): up to 54 blanks the first grid always
works (0.06 ms per puzzle at 40, 0.26 ms at 54); 56 needs 1.2 grids on average, 58 needs 3.9
(2.5 ms per puzzle), 59 needs ~36, and 60 was not reached in 1000 grids: a single random removal
pass ends at a minimal puzzle, which rarely has more than 58 blanks. Mean rating: 0.02 at 40 blanks (naked singles
suffice), 0.5 at 45, 3.3 at 50, 26 at 54, 70 at 58.

Why the OOD axis is difficulty at a fixed 9×9 size: a 16×16 sudoku needs digits 10–16, which are
input tokens and output classes the model never saw in training, so failure there would measure
vocabulary extrapolation, not reasoning depth. Fewer givens keeps the vocabulary and the geometry
and only lengthens the chain of deductions (and the search the solver needs, recorded as `rating`).

Meta per puzzle: `givens`, `blanks` (= size) and `rating`, the number of branching nodes (cells
chosen with ≥ 2 candidates) the solver visits while proving uniqueness (choosing the most
constrained cell first, naked singles only: 0 means the puzzle falls to naked singles).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fpr_core.tasks.base import Task, TaskData

_FULL = 0x1FF
"""Bitmask with the nine digit bits set (bit d-1 stands for digit d)."""

_MAX_ATTEMPTS_PER_PUZZLE = 1000
"""Fresh grids tried for one puzzle before giving up on its blank count."""


@njit(cache=True)
def _popcount9(mask):
    count = 0
    while mask:
        mask &= mask - 1
        count += 1
    return count


@njit(cache=True)
def _lowest_digit(bit):
    """The digit (1–9) of a single-bit mask."""
    digit = 1
    while bit > 1:
        bit >>= 1
        digit += 1
    return digit


@njit(cache=True)
def _masks_from_grid(grid, row_used, col_used, box_used):
    """Fill the used-digit masks from `grid` (81,); False if a given repeats in a unit."""
    row_used[:] = 0
    col_used[:] = 0
    box_used[:] = 0
    for cell in range(81):
        digit = grid[cell]
        if digit == 0:
            continue
        bit = 1 << (digit - 1)
        r, c = cell // 9, cell % 9
        b = (r // 3) * 3 + c // 3
        if (row_used[r] | col_used[c] | box_used[b]) & bit:
            return False
        row_used[r] |= bit
        col_used[c] |= bit
        box_used[b] |= bit
    return True


@njit(cache=True)
def count_solutions(puzzle, limit, solution):
    """Count solutions of `puzzle` (81,) int (0 = blank) up to `limit`.

    Iterative backtracking on bitmasks, always branching on the blank cell with the fewest
    candidates. Writes the first solution found into `solution` (81,). Returns (count, rating):
    rating = branching nodes visited (cells chosen with >= 2 candidates).
    """
    grid = puzzle.copy()
    row_used = np.zeros(9, np.int64)
    col_used = np.zeros(9, np.int64)
    box_used = np.zeros(9, np.int64)
    if not _masks_from_grid(grid, row_used, col_used, box_used):
        return 0, 0
    stack_cell = np.empty(81, np.int64)
    stack_left = np.empty(81, np.int64)  # candidates of that cell not tried yet
    depth = 0
    count = 0
    rating = 0
    while True:
        # Forward: pick the most constrained blank cell.
        best, best_count, best_mask = -1, 10, 0
        for cell in range(81):
            if grid[cell] != 0:
                continue
            r, c = cell // 9, cell % 9
            b = (r // 3) * 3 + c // 3
            mask = _FULL & ~(row_used[r] | col_used[c] | box_used[b])
            k = _popcount9(mask)
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
                r, c = cell // 9, cell % 9
                b = (r // 3) * 3 + c // 3
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
        r, c = cell // 9, cell % 9
        b = (r // 3) * 3 + c // 3
        grid[cell] = _lowest_digit(bit)
        row_used[r] |= bit
        col_used[c] |= bit
        box_used[b] |= bit


@njit(cache=True)
def _random_full_grid(digit_orders):
    """A complete valid grid (81,) by backtracking in row-major order; cell i tries digits in the
    order `digit_orders[i]` (81, 9). An exhaustive search from the empty grid, so it always ends
    with a full grid."""
    grid = np.zeros(81, np.int64)
    row_used = np.zeros(9, np.int64)
    col_used = np.zeros(9, np.int64)
    box_used = np.zeros(9, np.int64)
    next_try = np.zeros(81, np.int64)  # index into digit_orders[cell] of the next digit to try
    cell = 0
    while cell < 81:
        r, c = cell // 9, cell % 9
        b = (r // 3) * 3 + c // 3
        if grid[cell] != 0:  # coming back to this cell: take its digit off
            bit = 1 << (grid[cell] - 1)
            row_used[r] ^= bit
            col_used[c] ^= bit
            box_used[b] ^= bit
            grid[cell] = 0
        used = row_used[r] | col_used[c] | box_used[b]
        placed = False
        while next_try[cell] < 9:
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
def _carve(solution, removal_order, blanks):
    """Blank cells of `solution` in `removal_order` while the puzzle stays unique, stopping at
    `blanks` blanks. Returns (puzzle (81,), rating, ok); ok = False if the pass ended short."""
    puzzle = solution.copy()
    scratch = np.empty(81, np.int64)
    removed = 0
    for cell in removal_order:
        if removed == blanks:
            break
        digit = puzzle[cell]
        puzzle[cell] = 0
        count, _ = count_solutions(puzzle, 2, scratch)
        if count == 1:
            removed += 1
        else:
            puzzle[cell] = digit
    if removed < blanks:
        return puzzle, 0, False
    _, rating = count_solutions(puzzle, 2, scratch)
    return puzzle, rating, True


def make_puzzle(rng: np.random.Generator, blanks: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One unique-solution puzzle with exactly `blanks` blanks.

    Returns (puzzle (81,), solution (81,), rating, attempts); attempts = grids drawn (1 = no restart).
    """
    if not 0 <= blanks <= 64:
        raise ValueError(f"sudoku size (blanks) must be in 0..64, got {blanks}")
    for attempt in range(1, _MAX_ATTEMPTS_PER_PUZZLE + 1):
        digit_orders = np.argsort(rng.random((81, 9)), axis=1) + 1  # (81, 9) digit permutations
        solution = _random_full_grid(digit_orders)
        puzzle, rating, ok = _carve(solution, rng.permutation(81), blanks)
        if ok:
            return puzzle, solution, int(rating), attempt
    raise RuntimeError(
        f"sudoku: no unique puzzle with {blanks} blanks after {_MAX_ATTEMPTS_PER_PUZZLE} grids; "
        "use fewer blanks (58 or less is reliable)")


def rules_valid(digits: np.ndarray) -> np.ndarray:
    """(N, 9, 9) digits -> (N,) bool: every row, column and box is a permutation of 1–9."""
    onehot = digits[..., None] == np.arange(1, 10)  # (N, 9, 9, 9)
    rows_ok = (onehot.sum(axis=2) == 1).all(axis=(1, 2))
    cols_ok = (onehot.sum(axis=1) == 1).all(axis=(1, 2))
    boxes = onehot.reshape(-1, 3, 3, 3, 3, 9).sum(axis=(2, 4))  # (N, 3, 3, 9)
    boxes_ok = (boxes == 1).all(axis=(1, 2, 3))
    return rows_ok & cols_ok & boxes_ok


class Sudoku(Task):
    """9×9 sudoku with a unique solution; size = number of blanks (see module docstring)."""

    name = "sudoku"
    grid = True
    version = "1"
    default_train_size = 40
    default_ood_sizes = (45, 50, 54, 58)
    difficulty_key = "rating"

    @property
    def vocab_size(self) -> int:
        return 10

    @property
    def n_classes(self) -> int:
        return 9

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n puzzles with `size` blanks each; the Generator is seeded by (seed, size) so splits at
        different sizes never share a grid."""
        rng = np.random.default_rng([seed, size])
        puzzles = np.empty((n, 81), np.int64)
        solutions = np.empty((n, 81), np.int64)
        ratings = np.empty(n, np.int64)
        for i in range(n):
            puzzles[i], solutions[i], ratings[i], _ = make_puzzle(rng, size)
        inputs = puzzles.reshape(n, 9, 9)
        meta = {"givens": np.full(n, 81 - size, np.int64), "blanks": np.full(n, size, np.int64),
                "rating": ratings}
        return TaskData(inputs, solutions.reshape(n, 9, 9) - 1, np.ones((n, 9, 9), bool), meta, size)

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """A prediction (N, 9, 9) of classes 0–8 is correct iff it keeps every given and every
        row, column and box is a permutation of 1–9 (checked by the rules, not the stored target)."""
        digits = np.asarray(predictions, dtype=np.int64) + 1  # (N, 9, 9)
        if digits.shape != data.inputs.shape:
            raise ValueError(f"sudoku predictions must have shape {data.inputs.shape}, got {digits.shape}")
        givens = data.inputs != 0
        keeps_givens = ((digits == data.inputs) | ~givens).all(axis=(1, 2))
        return keeps_givens & rules_valid(digits)
