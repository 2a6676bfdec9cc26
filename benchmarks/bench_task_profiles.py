"""Train and evaluate a task family's CPU profile on several seeds; report what the tables in docs/study.md show.

Reads a task entry of a sweep spec (default sweeps/cpu_profiles.yaml), builds each seed's trial
config exactly as the orchestrator would (spec expansion: base, task overrides, grid cell), and runs
it in this process on one CPU thread (torch.set_num_threads(1)), so "CPU-minutes per trial" is the
process CPU time of one core. Prints, per seed and split: exact accuracy, the eval cap, reachability,
median iterations; for sudoku and chess exact accuracy per value of the difficulty key. Appends one
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
from orchestrator.store.provenance import git_commit  # noqa: E402
from orchestrator.report.published import PUBLISHED  # noqa: E402
from orchestrator.sweep.spec import load_spec  # noqa: E402

SMOKE = {"train.steps": 3, "train.n_train": 64, "train.n_select": 16, "eval.n_eval": 8, "eval.diagnostics": False,
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


def by_difficulty(split, min_n: int = 8) -> dict:
    """Exact accuracy per value of the task's difficulty key (sudoku: propagation depth; mazes:
    dead-end depth), for values held by at least ``min_n`` instances: {value: [exact, n]}."""
    diff, ok = split.result.instance_difficulty, split.result.instance_correct
    values, counts = np.unique(diff, return_counts=True)
    return {"exact_by_difficulty": {int(v): [round(float(ok[diff == v].mean()), 3), int(c)]
                                    for v, c in zip(values, counts) if c >= min_n}}


def run_one(cfg: ExperimentConfig, extra_sizes: list[int], extra_n: int) -> dict:
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    train_cpu = {}

    def on_log(step, metrics):
        train_cpu["cpu"] = time.process_time() - started_cpu
        train_cpu["wall"] = time.perf_counter() - started_wall
        train_cpu["last"] = {k: round(float(v), 4) for k, v in metrics.items()}
        print(f"  step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

    result = run_experiment(cfg, device="cpu", on_log=on_log)
    keyed = cfg.task.name in ("sudoku", "chess")
    splits = [{**split_summary(s), **(by_difficulty(s) if keyed else {})} for s in result.splits]
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


def published(task: str) -> str:
    """The published figure beside a family (one home: orchestrator/report/published.py)."""
    figure = PUBLISHED.get(task)
    return f"{figure.figure}: {figure.source}" if figure else "–"


def markdown_table(rows: list[dict]) -> str:
    """One table per family: a row per seed with exact accuracy on every split (its cap and capped
    share in the OOD cells), the training and total CPU minutes, the selected step; the published
    figure under it."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        splits = list(dict.fromkeys(s["split"] for r in mine for s in r["splits"]))
        out.append(f"\n**{task}** {mine[0]['params'] or ''} — published: {published(task)}\n")
        out.append("| seed | " + " | ".join(splits) + " | train CPU-min | total CPU-min | kept step |")
        out.append("|---" * (len(splits) + 4) + "|")
        for r in mine:
            by_split = {s["split"]: s for s in r["splits"]}
            cells = [f"{by_split[n]['exact']:.3f} (n {by_split[n]['n']}, reach {by_split[n]['reach']:.2f})"
                     if n in by_split else "–" for n in splits]
            out.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['train_cpu_min']} | {r['total_cpu_min']} | "
                       f"{r.get('selected_step') or '–'} |")
        means = [np.mean([next(s["exact"] for s in r["splits"] if s["split"] == n) for r in mine
                          if any(s["split"] == n for s in r["splits"])]) for n in splits]
        out.append("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " | | | |")
    return "\n".join(out)


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
    parser.add_argument("--table", type=Path, default=None, metavar="JSONL",
                        help="print the markdown table of the rows in JSONL (from --out) and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    sets = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.smoke:
        sets.update(SMOKE)
    spec = load_spec(args.spec)
    tasks = args.task or [t.name for t in spec.tasks]
    commit = git_commit()  # at the start: the code this process runs ('...+dirty' when the tree had changes)
    rows = []
    for task in tasks:
        for cfg in trial_configs(args.spec, task, args.seeds, sets):
            print(f"== {task} {cfg.task.params} seed {cfg.seed}", flush=True)
            row = run_one(cfg, args.extra_sizes, args.extra_n)
            row["overrides"] = {k: v for k, v in sets.items()}
            row["git_commit"] = commit
            for s in row["splits"]:
                print("  " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in s.items()), flush=True)
            if row["selected_step"] is not None:
                print(f"  kept the weights of step {row['selected_step']} "
                      f"(held-out exact {row['selected_score']:.3f})", flush=True)
            print(f"  train {row['train_cpu_min']} CPU-min ({row['train_wall_min']} wall-min), "
                  f"total {row['total_cpu_min']} CPU-min, status {row['status']}", flush=True)
            rows.append(row)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
