"""Mazes: a hand-made maze with its known path, perfectness, determinism, rule-based verifier."""
from collections import deque

import numpy as np
import pytest

from fpr_core.tasks import TaskData, get_task
from fpr_core.tasks.mazes import GOAL, OPEN, START, WALL

# 3×3 cells on a 7×7 grid; S at (1, 1), G at (3, 3); the tree path goes right, then down.
HAND = ["#######",
        "#S..#.#",
        "#.#.#.#",
        "#.#G..#",
        "#.###.#",
        "#...#.#",
        "#######"]
HAND_PATH = [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3)]
CHARS = {"#": WALL, ".": OPEN, "S": START, "G": GOAL}


@pytest.fixture(scope="module")
def task():
    return get_task("mazes")


def _grid(rows):
    return np.array([[CHARS[ch] for ch in row] for row in rows], dtype=np.int64)


def _mask(shape, cells):
    mask = np.zeros(shape, dtype=np.int64)
    for cell in cells:
        mask[cell] = 1
    return mask


def _data(grid):
    return TaskData(grid[None], np.zeros_like(grid)[None], np.ones_like(grid, bool)[None], {},
                    grid.shape[0])


def _bfs_path(grid):
    """Reference shortest path by plain BFS over open positions (independent of the generator)."""
    start = tuple(np.argwhere(grid == START)[0])
    goal = tuple(np.argwhere(grid == GOAL)[0])
    prev, queue = {start: None}, deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if grid[nr, nc] != WALL and (nr, nc) not in prev:
                prev[(nr, nc)] = (r, c)
                queue.append((nr, nc))
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = prev[node]
    return path, len(prev)


def test_hand_made_maze_known_path(task):
    grid = _grid(HAND)
    path, _ = _bfs_path(grid)
    assert sorted(path) == sorted(HAND_PATH)
    assert task.verify(_data(grid), _mask(grid.shape, HAND_PATH)[None]).tolist() == [True]


@pytest.mark.parametrize("name, cells", [
    ("through a wall", [(1, 1), (2, 1), (3, 1), (3, 2), (3, 3)]),
    ("gap", [(1, 1), (1, 2), (1, 3), (3, 3)]),
    ("extra branch", HAND_PATH + [(2, 1)]),
    ("detour cell moved", [(1, 1), (1, 2), (1, 3), (2, 3), (3, 4)]),
    ("goal missing", HAND_PATH[:-1]),
    ("empty", []),
])
def test_hand_made_maze_rejects_corruptions(task, name, cells):
    grid = _grid(HAND)
    assert task.verify(_data(grid), _mask(grid.shape, cells)[None]).tolist() == [False], name


def test_verifier_rejects_a_path_plus_a_disjoint_loop():
    # an open room (not a perfect maze): a valid path plus a separate 2x2 ring passes every degree
    # check, so only the connectivity walk can reject it
    task = get_task("mazes")
    grid = np.full((7, 7), WALL, dtype=np.int64)
    grid[1:6, 1:6] = OPEN
    grid[1, 1], grid[1, 5] = START, GOAL
    line = [(1, c) for c in range(1, 6)]
    assert task.verify(_data(grid), _mask(grid.shape, line)[None]).tolist() == [True]
    ring = [(3, 3), (3, 4), (4, 3), (4, 4)]
    assert task.verify(_data(grid), _mask(grid.shape, line + ring)[None]).tolist() == [False]


@pytest.mark.parametrize("size", [5, 9, 13])
def test_generated_mazes_are_perfect_and_target_is_the_bfs_path(task, size):
    data = task.generate(40, size, seed=size)
    c = (size - 1) // 2
    assert data.inputs.shape == data.targets.shape == (40, size, size)
    assert data.inputs.dtype == data.targets.dtype == np.int64 and data.mask.all()
    for grid, target, path_len in zip(data.inputs, data.targets, data.meta["path_len"]):
        assert (grid[0] == WALL).all() and (grid[-1] == WALL).all()
        assert (grid[:, 0] == WALL).all() and (grid[:, -1] == WALL).all()
        assert (grid[::2, ::2] == WALL).all() and (grid[1::2, 1::2] != WALL).all()
        n_open = int((grid != WALL).sum())
        path, reached = _bfs_path(grid)
        assert reached == n_open == 2 * c * c - 1  # connected with cells - 1 corridors: a tree
        assert np.array_equal(target, _mask(grid.shape, path)) and path_len == len(path)
    assert (data.meta["size"] == size).all()
    assert task.verify(data, data.targets).all()


def test_start_is_independent_of_the_generation_origin(task):
    data = task.generate(400, 9, seed=0)
    starts = {tuple(np.argwhere(g == START)[0]) for g in data.inputs}
    assert len(starts) == 16  # every one of the 4×4 cells is used as a start


def test_verifier_rejects_corrupted_generated_paths(task):
    data = task.generate(30, 13, seed=1)
    rng = np.random.default_rng(0)
    gap = data.targets.copy()
    through_wall = data.targets.copy()
    for k in range(30):
        inner = np.argwhere(data.targets[k] & (data.inputs[k] == OPEN))
        if len(inner):
            gap[k][tuple(inner[rng.integers(len(inner))])] = 0
        else:  # start and goal adjacent: drop the goal instead
            gap[k][tuple(np.argwhere(data.inputs[k] == GOAL)[0])] = 0
        walls = np.argwhere(data.inputs[k] == WALL)
        through_wall[k][tuple(walls[rng.integers(len(walls))])] = 1
    assert not task.verify(data, gap).any()
    assert not task.verify(data, through_wall).any()
    assert not task.verify(data, np.zeros_like(data.targets)).any()
    assert not task.verify(data, 2 * data.targets).any()  # classes other than 0/1


def test_rejects_bad_sizes_params_and_shapes(task):
    for size in (4, 8, 3):
        with pytest.raises(ValueError, match="mazes.*odd"):
            task.generate(2, size, 0)
    with pytest.raises(ValueError, match="mazes"):
        get_task("mazes", cells=4)
    data = task.generate(2, 9, 0)
    with pytest.raises(ValueError, match="shape"):
        task.verify(data, data.targets[:, :5])


def _reference_deadend_depth(grid):
    """Dead-end filling one round at a time with plain Python sets (independent of the module)."""
    open_ = {tuple(p) for p in np.argwhere(grid != WALL)}
    keep = {tuple(np.argwhere(grid == START)[0]), tuple(np.argwhere(grid == GOAL)[0])}
    rounds = 0
    while True:
        dead = {p for p in open_ - keep
                if sum((p[0] + dr, p[1] + dc) in open_ for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))) <= 1}
        if not dead:
            return rounds, open_
        open_ -= dead
        rounds += 1


def test_hand_made_maze_difficulty_metadata():
    # HAND: the longest branch off the S-G path is the right-hand corridor (1,5)-(5,5) plus (3,4):
    # filled from (1,5) and (5,5) inwards; (5,1)-(5,3) with (4,1),(3,1),(2,1) hangs off (1,1).
    grid = _grid(HAND)
    rounds, remaining = _reference_deadend_depth(grid)
    from fpr_core.tasks.mazes import deadend_depth
    assert deadend_depth(grid[None]).tolist() == [rounds]
    assert rounds == 6  # (5,3),(5,2),(5,1),(4,1),(3,1),(2,1): six positions hang off the start
    assert remaining == set(HAND_PATH)  # what dead-end filling leaves is exactly the path


@pytest.mark.parametrize("size", [9, 17])
def test_generated_difficulty_keys_match_independent_references(task, size):
    data = task.generate(24, size, seed=3)
    assert task.difficulty_key == "deadend_depth" and task.cap_law == "quadratic"
    for grid, target, depth, dist in zip(data.inputs, data.targets, data.meta["deadend_depth"],
                                         data.meta["bfs_distance"]):
        rounds, remaining = _reference_deadend_depth(grid)
        assert depth == rounds
        assert remaining == {tuple(p) for p in np.argwhere(target == 1)}
        path, _ = _bfs_path(grid)
        assert dist == len(path) - 1


def test_deadend_depth_grows_about_quadratically_with_side(task):
    means = {s: task.generate(64, s, seed=0).meta["deadend_depth"].mean() for s in (9, 33)}
    assert 8 <= means[9] <= 17 and 120 <= means[33] <= 200  # ~12 and ~160 (DESIGN.md)
    assert means[33] / means[9] > (33 / 9) ** 1.5


def test_open_loss_mask_excludes_walls_like_deep_thinking():
    dt = get_task("mazes", loss_mask="open")
    data = dt.generate(16, 9, seed=2)
    assert np.array_equal(data.mask, data.inputs != WALL)
    assert np.array_equal(data.inputs, get_task("mazes").generate(16, 9, seed=2).inputs)
    noisy_walls = np.where(data.inputs == WALL, 1, data.targets)  # marks every wall as path
    assert dt.verify(data, noisy_walls).all()            # walls are read as unmarked
    assert not get_task("mazes").verify(data, noisy_walls).any()
    with pytest.raises(ValueError, match="loss_mask.*'all', 'open'"):
        get_task("mazes", loss_mask="walls")
