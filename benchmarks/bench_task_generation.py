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
import time
from typing import Callable

from fpr_core.tasks import get_task

Row = dict[str, object]


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` wall-clock runs of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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


BENCHES: dict[str, Callable[[bool], list[Row]]] = {
    "prefix_sums": bench_prefix_sums,
    "mazes": bench_mazes,
    "state_tracking": bench_state_tracking,
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
