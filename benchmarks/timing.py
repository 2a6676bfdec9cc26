"""Wall-clock timing shared by the benchmarks (run as scripts, so `from timing import ...` works)."""
from __future__ import annotations

import time
from typing import Callable, Sequence


def best_times(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Fastest of ``repeats`` runs of each fn, in seconds; the fns are interleaved per repeat so a
    change in machine load hits every contender alike (side-by-side ratios stay fair)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock runs of fn(), in seconds."""
    return best_times([fn], repeats)[0]
