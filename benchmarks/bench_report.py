"""Time the report's statistics (competence gate, bootstrap tables, claim verdicts) on a synthetic
results table of many trials: a report must stay interactive on a large sweep (target: 10^4
trials in under a minute; figures are not timed here).

The table has the schema's columns: 18 variants (recall x outer norm x spectral) x seeds on one
task, 4 splits per trial, 64 instances per split with per-instance correctness, iterations,
difficulty and halting flags.

    .venv/bin/python benchmarks/bench_report.py            # 10^4 trials (about 556 seeds per variant)
    .venv/bin/python benchmarks/bench_report.py --smoke    # 180 trials, seconds
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
import pyarrow as pa

from orchestrator.report.build import ood_table
from orchestrator.report.claims import compute_verdicts
from orchestrator.report.frame import prepare
from orchestrator.store.schema import results_schema
from timing import best_time

SPLITS = (("id", 16), ("ood_32", 32), ("ood_64", 64), ("ood_128", 128))
N_INST = 64


def synthetic_table(trials: int, seed: int = 0):
    """A pandas frame of ``trials`` x 4 rows in the results schema."""
    rng = np.random.default_rng(seed)
    variants = list(itertools.product(("none", "standard", "internal"), ("none", "rms"), (0.5, 1.0, 2.0)))
    rows = {f.name: [] for f in results_schema()}
    for t in range(trials):
        recall, norm, sigma = variants[t % len(variants)]
        seed_id = t // len(variants)
        for split, size in SPLITS:
            acc = 0.98 if split == "id" else (0.7 if recall != "none" else 0.2)
            iters = rng.integers(size // 2, 4 * size, N_INST)
            values = {"sweep": "bench", "trial_id": f"t{t:05d}", "task": "prefix_sums", "split": split,
                      "size": size, "train_size": 16, "n": N_INST, "exact_acc": acc, "seed": seed_id,
                      "status": "ok", "eval_cap": 4 * size, "reachability": 0.9, "cycled_frac": 0.0,
                      "spectral_radius": 0.8, "input_derivative": 0.5 if recall != "none" else 0.0,
                      "probe_verified": 1.0, "difficulty_key": "length",
                      "instance_correct": (rng.random(N_INST) < acc).tolist(),
                      "instance_iters": iters.astype(float).tolist(),
                      "instance_difficulty": (iters + rng.integers(0, 8, N_INST)).astype(float).tolist(),
                      "instance_converged": (iters < 4 * size).tolist(), "instance_cycled": [False] * N_INST,
                      "cfg.model.recall": recall, "cfg.model.outer_norm": norm, "cfg.model.spectral": sigma,
                      "cfg.train.seed": seed_id}
            for name in rows:
                rows[name].append(values.get(name))
    return pa.Table.from_pydict(rows, schema=results_schema()).to_pandas()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="180 trials, seconds")
    parser.add_argument("--trials", type=int, default=None, help="trials in the table (default 10000)")
    args = parser.parse_args()
    trials = args.trials or (180 if args.smoke else 10_000)
    df = synthetic_table(trials)
    print(f"{trials} trials, {len(df)} rows, {N_INST} instances per row")
    frame = prepare(df)
    t_prepare = best_time(lambda: prepare(df), 1)
    t_table = best_time(lambda: ood_table(frame), 1)
    t_claims = best_time(lambda: compute_verdicts(frame), 1)
    print(f"prepare {t_prepare:.2f} s, accuracy table {t_table:.2f} s, verdicts {t_claims:.2f} s, "
          f"total {t_prepare + t_table + t_claims:.2f} s")


if __name__ == "__main__":
    main()
