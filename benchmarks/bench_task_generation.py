"""Task generation speed: each task at its training size and its largest OOD size.

Mazes are also timed side by side with the reasoning-gym maze generator (`pip install
reasoning-gym`, the `bench` extra) on equal work: the same number of mazes of the same grid side,
each with a start, a goal and its shortest path (reasoning-gym returns the BFS path length; ours
returns the full path mask). The printed ratio is peer time / our time (goal: >= 10x).

Every task is one function in `BENCHES` returning rows; add a task by appending a function.

    .venv/bin/python benchmarks/bench_task_generation.py            # all tasks
    .venv/bin/python benchmarks/bench_task_generation.py mazes      # some tasks
    .venv/bin/python benchmarks/bench_task_generation.py --smoke    # tiny sizes, seconds
"""
from __future__ import annotations

import argparse
from typing import Callable

from fpr_core.tasks import get_task
from timing import best_time

Row = dict[str, object]



def time_task(name: str, sizes_n: list[tuple[int, int]], repeats: int, **params) -> list[Row]:
    """One row per (size, n): seconds to generate n instances, and instances per second."""
    task = get_task(name, **params)
    rows = []
    for size, n in sizes_n:
        seconds = best_time(lambda: task.generate(n, size, seed=0), repeats)
        label = name + (f"[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else "")
        rows.append({"task": label, "size": size, "n": n, "ours_s": seconds,
                     "per_s": n / seconds})
    return rows


def bench_prefix_sums(smoke: bool) -> list[Row]:
    task = get_task("prefix_sums")
    big = max(task.default_ood_sizes)
    return time_task("prefix_sums", [(task.default_train_size, 64 if smoke else 10_000),
                                     (big, 64 if smoke else 10_000)], 1 if smoke else 3)


def bench_state_tracking(smoke: bool) -> list[Row]:
    rows = []
    for group in ("S5", "A5", "Z60"):
        task = get_task("state_tracking", group=group)
        n = 64 if smoke else 10_000
        rows += time_task("state_tracking", [(task.default_train_size, n),
                                             (max(task.default_ood_sizes), n)],
                          1 if smoke else 3, group=group)
    return rows


def _peer_mazes(size: int, n: int) -> Callable[[], object]:
    """reasoning-gym: n random-wall mazes of side `size` with start, goal and BFS distance."""
    from reasoning_gym.games.maze import MazeConfig, MazeDataset
    config = MazeConfig(min_dist=1, max_dist=10 * size * size, min_grid_size=size,
                        max_grid_size=size, seed=0, size=n)

    def run():
        dataset = MazeDataset(config)
        return [dataset[i] for i in range(n)]
    return run


def bench_mazes(smoke: bool) -> list[Row]:
    task = get_task("mazes")
    if smoke:
        plan = [(task.default_train_size, 32)]
    else:
        plan = [(task.default_train_size, 1024), (max(task.default_ood_sizes), 256), (59, 64),
                (101, 32)]
    rows = time_task("mazes", plan, 1 if smoke else 3)
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        print("reasoning-gym not installed: skipping the maze peer comparison "
              "(.venv/bin/pip install reasoning-gym)")
        return rows
    for row in rows:
        peer = best_time(_peer_mazes(row["size"], row["n"]), 1)
        row["peer"] = "reasoning-gym"
        row["peer_s"] = peer
        row["peer/ours"] = peer / row["ours_s"]
    return rows


def _unique_fraction(puzzles: list[list[int]]) -> float:
    """Fraction of 81-cell puzzles (0 = blank) with exactly one solution, by our bitmask counter."""
    import numpy as np
    from fpr_core.tasks.sudoku import count_solutions
    scratch = np.zeros(81, np.int64)
    counts = [count_solutions(np.asarray(p, np.int64), 2, scratch)[0] for p in puzzles]
    return sum(c == 1 for c in counts) / len(counts)


def _peer_sudoku_py(blanks: int, n: int, out: list) -> Callable[[], object]:
    """py-sudoku: n puzzles with `blanks` random cells blanked (no uniqueness guarantee)."""
    from sudoku import Sudoku as PySudoku

    def run():
        out.clear()
        for i in range(n):
            puzzle = PySudoku(3, seed=i).difficulty((blanks + 0.5) / 81)
            out.append([cell or 0 for row in puzzle.board for cell in row])
    return run


def _peer_sudoku_rg(blanks: int, n: int, out: list) -> Callable[[], object]:
    """reasoning-gym: n puzzles, clues removed while unique, stopping at `blanks` (or short)."""
    from reasoning_gym.games.sudoku import SudokuConfig, SudokuDataset
    config = SudokuConfig(min_empty=blanks, max_empty=blanks, seed=0, size=n)

    def run():
        out.clear()
        dataset = SudokuDataset(config)
        for i in range(n):
            out.append([cell for row in dataset[i]["metadata"]["puzzle"] for cell in row])
    return run


def bench_sudoku(smoke: bool) -> list[Row]:
    """Ours vs py-sudoku and reasoning-gym on equal work: n puzzles with the same blank count.

    Ours always returns unique puzzles with exactly `blanks` blanks; the note lines give the
    fraction of each peer's puzzles that are unique (our counter) and that reach the blank count.
    """
    task = get_task("sudoku")
    plan = [(40, 8)] if smoke else [(40, 100), (54, 100), (58, 50)]
    for size, _ in plan:
        task.generate(1, size, seed=0)  # compile the numba kernels outside the timing
    rows = time_task("sudoku", plan, 1 if smoke else 3)
    peers = [("py-sudoku", "sudoku", _peer_sudoku_py), ("reasoning-gym", "reasoning_gym",
                                                         _peer_sudoku_rg)]
    out_rows = []
    for row in rows:
        compared = []
        for peer, module, make in peers:
            try:
                __import__(module)
            except ImportError:
                print(f"{peer} not installed: skipping it (.venv/bin/pip install {peer})")
                continue
            puzzles: list = []
            seconds = best_time(make(row["size"], row["n"], puzzles), 1)
            unique = _unique_fraction(puzzles)
            at_size = sum(p.count(0) == row["size"] for p in puzzles) / len(puzzles)
            per_unique = (f"time per unique puzzle {seconds / unique / row['ours_s']:.4g}x ours"
                          if unique else "no unique puzzle at all")
            print(f"sudoku {row['size']} blanks, {peer}: unique {unique:.0%}, exactly "
                  f"{row['size']} blanks {at_size:.0%} (ours: 100%, 100%); {per_unique}")
            compared.append({**row, "peer": peer, "peer_s": seconds,
                             "peer/ours": seconds / row["ours_s"]})
        out_rows += compared or [row]
    return out_rows


def bench_chess(smoke: bool) -> list[Row]:
    """Mate-in-1 puzzles per second (size = pieces besides the kings): `generate` (process pool over
    the cores) and one process alone."""
    from fpr_core.tasks.chess import _generate_chunk
    plan = [(3, 8), (5, 4)] if smoke else [(3, 256), (5, 64), (9, 32)]
    rows = time_task("chess", plan, 1)
    for size, n in plan:
        seconds = best_time(lambda: _generate_chunk(n, 1, size, (0, size, 0)), 1)
        rows.append({"task": "chess[1 process]", "size": size, "n": n, "ours_s": seconds,
                     "per_s": n / seconds})
    return rows


BENCHES: dict[str, Callable[[bool], list[Row]]] = {
    "prefix_sums": bench_prefix_sums,
    "mazes": bench_mazes,
    "state_tracking": bench_state_tracking,
    "sudoku": bench_sudoku,
    "chess": bench_chess,
}
"""Task name -> benchmark function(smoke) returning rows; other task families append theirs."""


def print_rows(rows: list[Row]) -> None:
    """A plain aligned table of the rows."""
    columns = ["task", "size", "n", "ours_s", "per_s", "peer", "peer_s", "peer/ours"]
    table = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help=f"tasks to time, some of {list(BENCHES)} "
                        "(default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args()
    unknown = sorted(set(args.tasks) - set(BENCHES))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; expected some of {list(BENCHES)}")
    rows = []
    for name in args.tasks or list(BENCHES):
        rows += BENCHES[name](args.smoke)
    print_rows(rows)


if __name__ == "__main__":
    main()
