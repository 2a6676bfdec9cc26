"""Train and evaluate a task family's CPU profile on several seeds; report what the tables in docs/study.md show.

Reads a task entry of a sweep spec (default sweeps/cpu_profiles.yaml), builds each seed's trial
config exactly as the orchestrator would (spec expansion: base, task overrides, grid cell), and runs
it in this process on one CPU thread (torch.set_num_threads(1)), so "CPU-minutes per trial" is the
process CPU time of one core. Prints, per seed and split: exact accuracy, the eval cap, reachability,
median iterations; for tasks with a rating (sudoku) exact accuracy at rating 0 and > 0. Appends one
JSON line per seed to --out.

    python benchmarks/bench_task_profiles.py --task mazes --seeds 0 1 2 --extra-sizes 59 --extra-n 32
    python benchmarks/bench_task_profiles.py --task sudoku --set train.steps=800 --seeds 0
    python benchmarks/bench_task_profiles.py --smoke        # every task, tiny budget
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpr_core.config import ExperimentConfig  # noqa: E402
from fpr_core.experiment import evaluate_sizes, run_experiment  # noqa: E402
from orchestrator.sweep.expand import expand, resolve  # noqa: E402
from orchestrator.sweep.spec import load_spec  # noqa: E402

SMOKE = {"train.steps": 3, "train.n_train": 64, "eval.n_eval": 8, "eval.diagnostics": False,
         "solver.eval_cap": 4, "solver.train_cap": 4}


def _parse_value(text: str):
    return yaml.safe_load(text)


def trial_configs(spec_path: Path, task: str, seeds: list[int], sets: dict) -> list[ExperimentConfig]:
    """One ExperimentConfig per seed for the first grid cell of `task` in the spec, with `sets` applied."""
    spec = load_spec(spec_path)
    cells = [c for c in expand(spec, path=spec_path) if c.task == task]
    if not cells:
        raise SystemExit(f"{spec_path}: no task entry named {task!r}")
    cfg = ExperimentConfig.from_dict(resolve(cells[0], sets).experiment_config())
    return [dataclasses.replace(cfg, seed=seed) for seed in seeds]


def split_summary(split) -> dict:
    m = split.metrics
    out = {"split": split.split, "size": split.size, "exact": m["exact_acc"], "token": m["token_acc"],
           "cap": m["eval_cap"], "reach": m["reachability"], "iters_p50": m["iters_p50"],
           "n": m["n"]}
    return out


def stratified(split, key_values: np.ndarray | None) -> dict:
    """Exact accuracy at difficulty 0 and > 0 (sudoku: solver rating 0 = naked singles only)."""
    if key_values is None:
        return {}
    diff, ok = split.instance_difficulty, split.instance_correct
    zero = diff == 0
    return {"exact_rating0": float(ok[zero].mean()) if zero.any() else None,
            "exact_rating_pos": float(ok[~zero].mean()) if (~zero).any() else None,
            "n_rating_pos": int((~zero).sum())}


def run_one(cfg: ExperimentConfig, extra_sizes: list[int], extra_n: int) -> dict:
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    train_cpu = {}

    def on_log(step, metrics):
        train_cpu["cpu"] = time.process_time() - started_cpu
        train_cpu["wall"] = time.perf_counter() - started_wall
        train_cpu["last"] = {k: round(float(v), 4) for k, v in metrics.items()}
        print(f"  step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

    result = run_experiment(cfg, device="cpu", on_log=on_log)
    rating = cfg.task.name == "sudoku"
    splits = [{**split_summary(s), **stratified(s, s.instance_difficulty if rating else None)}
              for s in result.splits]
    if extra_sizes and result.train.status == "ok":
        small = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, n_eval=extra_n))
        extra, _ = evaluate_sizes(result.train.eval_model, small, tuple(extra_sizes), device="cpu")
        splits += [split_summary(s) for s in extra]
    return {"task": cfg.task.name, "params": cfg.task.params, "seed": cfg.seed,
            "status": result.train.status, "steps": result.train.steps,
            "selected_step": result.train.selected_step, "selected_score": result.train.selected_score,
            "train_cpu_min": round(train_cpu.get("cpu", float("nan")) / 60, 2),
            "train_wall_min": round(result.train.seconds / 60, 2),
            "total_cpu_min": round((time.process_time() - started_cpu) / 60, 2),
            "final_train": train_cpu.get("last"), "splits": splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "sweeps" / "cpu_profiles.yaml")
    parser.add_argument("--task", action="append", help="task entry name (repeatable; default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override, e.g. train.steps=800")
    parser.add_argument("--extra-sizes", type=int, nargs="*", default=[],
                        help="OOD sizes evaluated after training on --extra-n instances (e.g. 59)")
    parser.add_argument("--extra-n", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per trial")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.smoke:
        sets.update(SMOKE)
    spec = load_spec(args.spec)
    tasks = args.task or [t.name for t in spec.tasks]
    for task in tasks:
        for cfg in trial_configs(args.spec, task, args.seeds, sets):
            print(f"== {task} {cfg.task.params} seed {cfg.seed}", flush=True)
            row = run_one(cfg, args.extra_sizes, args.extra_n)
            row["overrides"] = {k: v for k, v in sets.items()}
            for s in row["splits"]:
                print("  " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in s.items()), flush=True)
            if row["selected_step"] is not None:
                print(f"  kept the weights of step {row['selected_step']} "
                      f"(held-out exact {row['selected_score']:.3f})", flush=True)
            print(f"  train {row['train_cpu_min']} CPU-min ({row['train_wall_min']} wall-min), "
                  f"total {row['total_cpu_min']} CPU-min, status {row['status']}", flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
