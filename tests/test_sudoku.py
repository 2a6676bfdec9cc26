"""Sudoku: unique puzzles (checked by two independent solvers), the rules verifier, determinism."""
import numpy as np
import pytest

from fpr_core.tasks.sudoku import Sudoku, count_solutions, rules_valid

# A well-known puzzle (Wikipedia's "Sudoku" article) and its unique solution.
KNOWN_PUZZLE = (
    "530070000600195000098000060800060003400803001700020006060000280000419005000080079")
KNOWN_SOLUTION = (
    "534678912672195348198342567859761423426853791713924856961537284287419635345286179")


def _grid(text: str) -> np.ndarray:
    return np.array([int(ch) for ch in text], dtype=np.int64)


def _python_count(grid: list[int], limit: int = 2) -> int:
    """An independent plain-Python backtracker (sets, most-constrained cell first)."""
    def candidates(cell: int) -> set[int]:
        r, c = divmod(cell, 9)
        br, bc = 3 * (r // 3), 3 * (c // 3)
        seen = {grid[9 * r + j] for j in range(9)} | {grid[9 * i + c] for i in range(9)}
        seen |= {grid[9 * (br + i) + bc + j] for i in range(3) for j in range(3)}
        return set(range(1, 10)) - seen

    blanks = [cell for cell in range(81) if grid[cell] == 0]
    if not blanks:
        return 1
    cell = min(blanks, key=lambda k: len(candidates(k)))
    total = 0
    for digit in sorted(candidates(cell)):
        grid[cell] = digit
        total += _python_count(grid, limit - total)
        grid[cell] = 0
        if total >= limit:
            break
    return total


@pytest.fixture(scope="module")
def task() -> Sudoku:
    return Sudoku()


@pytest.fixture(scope="module")
def hard_split(task):
    return task.generate(8, 54, seed=3)


def test_known_puzzle_solves_to_known_solution():
    solution = np.zeros(81, np.int64)
    count, _ = count_solutions(_grid(KNOWN_PUZZLE), 2, solution)
    assert count == 1
    assert np.array_equal(solution, _grid(KNOWN_SOLUTION))


def test_counter_sees_many_and_zero_solutions():
    scratch = np.zeros(81, np.int64)
    assert count_solutions(np.zeros(81, np.int64), 2, scratch)[0] == 2
    # Rows 0 and 3, columns 3 and 4 of the known solution hold 6 7 / 7 6 inside one stack: blanking
    # that rectangle leaves exactly two solutions (the digits can swap).
    rectangle = _grid(KNOWN_SOLUTION).reshape(9, 9)
    rectangle[[0, 0, 3, 3], [3, 4, 3, 4]] = 0
    assert count_solutions(rectangle.ravel(), 3, scratch)[0] == 2
    assert _python_count(rectangle.ravel().tolist(), 3) == 2
    clash = _grid(KNOWN_PUZZLE)
    clash[2] = 5  # a second 5 in row 0
    assert count_solutions(clash, 2, scratch)[0] == 0


def test_generated_puzzles_are_unique_and_consistent(task, hard_split):
    data = hard_split
    assert data.inputs.shape == data.targets.shape == data.mask.shape == (8, 9, 9)
    assert data.inputs.dtype == data.targets.dtype == np.int64 and data.mask.dtype == bool
    assert ((data.inputs == 0).sum(axis=(1, 2)) == 54).all()
    assert (data.meta["blanks"] == 54).all() and (data.meta["givens"] == 27).all()
    scratch = np.zeros(81, np.int64)
    for puzzle, target in zip(data.inputs, data.targets):
        count, _ = count_solutions(puzzle.ravel(), 3, scratch)
        assert count == 1
        assert np.array_equal(scratch, target.ravel() + 1)
    for puzzle in data.inputs[:3]:  # the independent solver agrees on a few
        assert _python_count(puzzle.ravel().tolist()) == 1


def test_rating_grows_with_blanks(task, hard_split):
    easy = task.generate(8, 40, seed=3)
    assert easy.meta["rating"].mean() < hard_split.meta["rating"].mean()


def test_verifier_accepts_solutions_and_rejects_broken_ones(task, hard_split):
    data = hard_split
    assert task.verify(data, data.targets).all()
    flipped = data.targets.copy()
    blank_r, blank_c = np.argwhere(data.inputs[0] == 0)[0]
    flipped[0, blank_r, blank_c] = (flipped[0, blank_r, blank_c] + 1) % 9
    given_r, given_c = np.argwhere(data.inputs[1] != 0)[0]
    flipped[1, given_r, given_c] = (flipped[1, given_r, given_c] + 1) % 9
    ok = task.verify(data, flipped)
    assert not ok[0] and not ok[1] and ok[2:].all()


def test_verifier_checks_rules_not_the_stored_target(task):
    """A valid grid different from the stored solution passes when it keeps every given."""
    solution = _grid(KNOWN_SOLUTION).reshape(1, 9, 9)
    relabelled = (solution % 9) + 1  # relabel digits d -> d+1 (9 -> 1): still a valid grid
    assert rules_valid(relabelled).all()
    empty = Sudoku().generate(1, 0, seed=0)
    empty.inputs[:] = 0  # no givens at all: any valid grid counts
    assert Sudoku().verify(empty, relabelled - 1).all()


def test_generation_is_deterministic_and_seeded(task):
    a, b, c = task.generate(4, 45, seed=11), task.generate(4, 45, seed=11), task.generate(4, 45, seed=12)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert np.array_equal(a.meta["rating"], b.meta["rating"])
    assert not np.array_equal(a.inputs, c.inputs)


def test_bad_arguments_raise(task):
    with pytest.raises(ValueError, match="sudoku"):
        Sudoku(box=4)
    with pytest.raises(ValueError, match="blanks"):
        task.generate(1, 70, seed=0)
    with pytest.raises(ValueError, match="shape"):
        task.verify(task.generate(2, 40, seed=0), np.zeros((2, 81)))
