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


def _python_count(grid: list[int], limit: int = 2, box: tuple[int, int] = (3, 3)) -> int:
    """An independent plain-Python backtracker (sets, most-constrained cell first)."""
    rows, cols = box
    n = rows * cols

    def candidates(cell: int) -> set[int]:
        r, c = divmod(cell, n)
        br, bc = rows * (r // rows), cols * (c // cols)
        seen = {grid[n * r + j] for j in range(n)} | {grid[n * i + c] for i in range(n)}
        seen |= {grid[n * (br + i) + bc + j] for i in range(rows) for j in range(cols)}
        return set(range(1, n + 1)) - seen

    blanks = [cell for cell in range(n * n) if grid[cell] == 0]
    if not blanks:
        return 1
    cell = min(blanks, key=lambda k: len(candidates(k)))
    total = 0
    for digit in sorted(candidates(cell)):
        grid[cell] = digit
        total += _python_count(grid, limit - total, box)
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
    with pytest.raises(ValueError, match="sudoku.*box.*2x3"):
        Sudoku(box=4)
    with pytest.raises(ValueError, match="blanks.*0..28"):
        Sudoku(box="2x3").generate(1, 29, seed=0)
    with pytest.raises(ValueError, match="blanks"):
        task.generate(1, 70, seed=0)
    with pytest.raises(ValueError, match="shape"):
        task.verify(task.generate(2, 40, seed=0), np.zeros((2, 81)))


@pytest.mark.parametrize("box, blanks", [("2x2", 9), ("2x3", 18), ("2x3", 24)])
def test_small_boards_are_unique_verified_and_rated(box, blanks):
    task = Sudoku(box=box)
    rows, cols = int(box[0]), int(box[2])
    n = rows * cols
    data = task.generate(12, blanks, seed=1)
    assert data.inputs.shape == data.targets.shape == (12, n, n)
    assert task.vocab_size == n + 1 and task.n_classes == n and task.cap_law == "fixed"
    assert ((data.inputs == 0).sum(axis=(1, 2)) == blanks).all() and data.inputs.max() <= n
    assert (data.meta["rating"] >= 0).all() and task.difficulty_key == "propagation_depth"
    assert (data.meta["propagation_depth"] >= 1).all()  # every puzzle has a blank: at least one round
    scratch = np.zeros(n * n, np.int64)
    for puzzle, target in zip(data.inputs, data.targets):
        assert count_solutions(puzzle.ravel(), 3, scratch, (rows, cols))[0] == 1
        assert np.array_equal(scratch, target.ravel() + 1)
        assert _python_count(puzzle.ravel().tolist(), 2, (rows, cols)) == 1  # independent solver
    assert rules_valid(data.targets + 1, (rows, cols)).all() and task.verify(data, data.targets).all()
    wrong = data.targets.copy()
    for k in range(len(wrong)):  # one blank cell changed: its row now repeats a digit
        r, c = np.argwhere(data.inputs[k] == 0)[0]
        wrong[k, r, c] = (wrong[k, r, c] + 1) % n
    assert not task.verify(data, wrong).any()


def test_six_by_six_ood_needs_search_only_at_the_top_of_the_ladder():
    task = Sudoku(box="2x3")
    assert (task.default_train_size, task.default_ood_sizes) == (10, (14, 18, 22, 24))
    assert (task.generate(64, 10, seed=0).meta["rating"] == 0).all()  # training: propagation only
    assert (task.generate(128, 24, seed=0).meta["rating"] > 0).any()


def test_board_coordinates_tell_rows_columns_and_boxes_apart():
    coords = Sudoku(box="2x3").coordinates()  # (36, 3): row, column, box
    assert coords.shape == (36, 3)
    r, c, b = coords.T
    assert np.array_equal(r, np.repeat(np.arange(6), 6)) and np.array_equal(c, np.tile(np.arange(6), 6))
    assert b[0] == b[2] == b[6 + 2] and b[2] != b[3] and b[6 + 2] != b[12]  # 2 rows x 3 columns boxes
    assert sorted(np.bincount(b)) == [6] * 6
    assert Sudoku().params == {} and Sudoku(box="2x2").params == {"box": "2x2"}
