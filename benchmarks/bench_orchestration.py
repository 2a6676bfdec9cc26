"""What the orchestration costs, measured side by side in one run (not a test; run on a quiet machine).

1. Overhead: the same 8 short trials (a) through `fpr-sweep run` (a fresh process: imports, local
   Ray start, MLflow SQLite store, Tune, per-trial Parquet, collect) and (b) through
   `fpr_core.experiment.run_experiment` in a plain sequential loop (one torch thread, as a Ray
   trial with resources.cpu 1 gets). Ratio = wall(a) / (wall(b) / slots), slots = trials that run
   at once = cores / resources.cpu. Goal <= 1.15x. Also (c): the trials dealt to `slots` plain
   loops running side by side, which separates what trials sharing the machine cost (c vs b)
   from what the orchestration costs (a vs c). (d): the same loops, each a fresh process timed
   from its start, not warmed up: the floor. No run of the same trials in new worker processes on
   the same slots can beat it (nor, with a local Ray, (d) plus Ray's start), so a goal below the
   printed floor is out of reach on that machine at that trial length.
2. Ray start-up: `ray.init` of a local Ray (as `fpr-sweep run` starts it), in a fresh process.
3. MLflow cost per trial: what the driver's tracking does for one trial (child run with params,
   training metrics every log step, final per-split metrics, config + convergence-plot artifacts,
   end) against a SQLite store, over 20 trials.
4. Results collection at 100,000 rows: per-trial Parquet files collected into results.parquet,
   then read back with pandas and duckdb.

Run: python benchmarks/bench_orchestration.py [--trials 8] [--steps 150] [--rows 100000] [--baseline DIR]
     (add --smoke for a tiny run that only checks every part still works; its numbers mean nothing)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def bench_spec(directory: Path, steps: int, trials: int) -> Path:
    """prefix_sums, `trials` grid cells (recall x outer norm x seeds), a few seconds each."""
    seeds = list(range(max(1, trials // 4)))
    spec = {"name": "bench-orch", "results_dir": str(directory / "results"),
            "tasks": [{"name": "prefix_sums", "train_size": 16, "ood_sizes": [32]}],
            "axes": {"model.recall": ["none", "standard"], "model.outer_norm": ["none", "rms"]},
            "base": {"model": {"dim": 32, "heads": 2, "conv": "1d"}, "solver": {"train_cap": 12, "eval_cap": 24},
                     "grad": "bptt",  # no-recall arms learn their input only through the full unroll
                     "train": {"steps": steps, "batch_size": 32, "n_train": 1024, "log_every": 25,
                               "checkpoint_every": 100, "warmup": 10},
                     "eval": {"n_eval": 64, "diag_n": 8, "power_iters": 3}},
            "seeds": seeds, "resources": {"cpu": 1, "gpu": 0}}
    path = directory / "bench.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sequential_loop(spec_path: Path, part: int = 0, parts: int = 1, warm: bool = True) -> tuple[float, int]:
    """Every trial of the spec (or every ``parts``-th from ``part``) through run_experiment, one
    after another; (seconds, trials). ``warm``: run the first trial once, untimed, before."""
    import torch

    from fpr_core.config import ExperimentConfig
    from fpr_core.experiment import run_experiment
    from orchestrator.sweep.expand import expand, resolve
    from orchestrator.sweep.spec import load_spec

    torch.set_num_threads(1)
    configs = [ExperimentConfig.from_dict(resolve(c, None).experiment_config()) for c in expand(load_spec(spec_path))]
    configs = configs[part::parts]
    if warm:
        run_experiment(configs[0], cache_dir=False)  # task generation kernels, first-call costs
    started = time.perf_counter()
    for cfg in configs:
        result = run_experiment(cfg, cache_dir=False)
        assert result.train.status == "ok", result.train.message
    return time.perf_counter() - started, len(configs)


def side_by_side_loops(spec_path: Path, slots: int, warm: bool = True) -> float:
    """The spec's trials dealt to ``slots`` plain loops that run at once, each a fresh process with
    one torch thread: what the trials cost sharing this machine, without any orchestration.
    Seconds until the last loop is done: ``warm``, each loop warms up first, as ``sequential_loop``
    does, and times its trials; otherwise from starting the processes to their exit, unwarmed, which
    is what running the trials in new processes costs at the least (interpreter, torch, first calls)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import bench_orchestration as b; "
            "print(b.sequential_loop(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == 'warm')[0])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    loops = [subprocess.Popen([sys.executable, "-c", code, str(REPO / "benchmarks"), str(spec_path), str(k),
                               str(slots), "warm" if warm else "fresh"], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=REPO)
             for k in range(slots)]
    seconds = []
    for loop in loops:
        out, _ = loop.communicate(timeout=3600)
        if loop.returncode != 0:
            raise SystemExit(f"a side-by-side loop failed (exit {loop.returncode})")
        seconds.append(float(out.strip().splitlines()[-1]))
    return max(seconds) if warm else time.perf_counter() - started


def through_cli(spec_path: Path, tree: Path = REPO) -> tuple[float, float]:
    """`fpr-sweep run` of the checkout at ``tree`` in a fresh process; (wall seconds, Ray start
    seconds it printed)."""
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec_path)], cwd=tree,
                          capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fpr-sweep run failed:\n{done.stdout}\n{done.stderr}")
    match = re.search(r"Ray started locally in ([0-9.]+) s", done.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def ray_startup() -> float:
    code = ("import os, time, ray; t = time.perf_counter(); "
            "ray.init(address='local', num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, "
            "logging_level='WARNING'); print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def fake_rows(trial_id: str, splits: int, n: int) -> list[dict]:
    """Rows shaped like a finished trial's (metrics and per-instance lists of length n)."""
    rows = []
    for i in range(splits):
        split, size = ("id", 16) if i == 0 else (f"ood_{16 * 2 ** i}", 16 * 2 ** i)
        rows.append({"sweep": "bench", "trial_id": trial_id, "task": "prefix_sums", "variant": "recall=none",
                     "seed": 0, "split": split, "size": size, "status": "ok", "n": n, "exact_acc": 0.5,
                     "token_acc": 0.9, "iters_mean": 12.0, "iters_p50": 11.0, "iters_p95": 20.0, "eval_cap": 32,
                     "reachability": 0.9, "train_seconds": 5.0, "train_steps": 150, "final_loss": 0.1,
                     "instance_iters": [12.0] * n, "instance_difficulty": [float(size)] * n,
                     "instance_correct": [True] * n, "finished_at": "2026-01-01T00:00:00+00:00"})
    return rows


def mlflow_per_trial(directory: Path, trials: int = 20, log_steps: int = 6) -> float:
    from orchestrator.store.store_address import default_tracking_uri
    from orchestrator.store.tracking import SweepTracker
    from orchestrator.sweep.metrics import train_report

    tracker = SweepTracker(default_tracking_uri(directory), "bench-mlflow", directory, {"spec_hash": "x"})
    config = {"model": {"dim": 32, "recall": "none"}, "train": {"steps": 150, "lr": 0.003}}
    curves = {"id": [1.0 / (k + 1) for k in range(12)], "ood_32": [1.0 / (k + 1) for k in range(24)]}
    started = time.perf_counter()
    for t in range(trials):
        trial_id = f"trial{t:03d}"
        run_id = tracker.trial_run(trial_id, trial_id, {"task": "prefix_sums"}, config)
        for step in range(log_steps):
            tracker.log_metrics(run_id, train_report({"loss": 1.0 / (step + 1), "exact_acc": 0.5, "iters_mean": 8}),
                                step * 25)
        tracker.log_final(run_id, fake_rows(trial_id, 2, 64), curves, config, 150)
        tracker.end_trial(trial_id, "ok")
    tracker.close()  # the writes are sent by a background thread: time them through to the store
    return (time.perf_counter() - started) / trials


def collection(directory: Path, rows: int, splits: int = 10, n: int = 64) -> dict[str, float]:
    import duckdb
    import pandas as pd

    from orchestrator.store import parquet

    sweep = directory / "collect"
    n_trials = rows // splits
    started = time.perf_counter()
    for t in range(n_trials):
        parquet.write_trial_rows(sweep, f"t{t:06d}", fake_rows(f"t{t:06d}", splits, n))
    out = {"write_trial_files": time.perf_counter() - started}
    started = time.perf_counter()
    path = parquet.collect(sweep)
    out["collect"] = time.perf_counter() - started
    started = time.perf_counter()
    df = pd.read_parquet(path)
    out["pandas_read"] = time.perf_counter() - started
    assert len(df) == n_trials * splits
    started = time.perf_counter()
    got = duckdb.sql(f"SELECT split, count(*), avg(exact_acc) FROM read_parquet('{path}') GROUP BY split").fetchall()
    out["duckdb_groupby"] = time.perf_counter() - started
    assert sum(r[1] for r in got) == n_trials * splits
    out["file_mb"] = path.stat().st_size / 1e6
    return out


def print_overhead(label: str, cli_seconds: float, ray_seconds: float, ideal: float, slots: int) -> None:
    print(f"    {label}: fpr-sweep run {cli_seconds:.1f} s (Ray start {ray_seconds:.1f} s); overhead ratio "
          f"fpr-sweep / (loop / {slots} slots) = {cli_seconds / ideal:.2f}x (goal <= 1.15x); "
          f"without Ray start-up {(cli_seconds - ray_seconds) / ideal:.2f}x (goal <= 1.3x)")


def print_floor(floor: float, floor_with_ray_start: float) -> None:
    """The best ratio an orchestrator that runs trials in new worker processes could print here:
    the fresh side-by-side loops do only that, with no orchestration at all; with a local Ray,
    its start comes on top (Ray's workers start after it)."""
    print(f"    floor (fresh side-by-side loops, no orchestration): {floor:.2f}x without Ray start-up, "
          f"{floor_with_ray_start:.2f}x with this run's Ray start; a goal below its floor cannot be "
          f"met on this machine at this trial length")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. a `git worktree` of main): its `fpr-sweep run` is timed "
                             "on the same spec in the same run, after this checkout's, against the same loop")
    parser.add_argument("--smoke", action="store_true", help="4 trials of 20 steps, 2,000 rows: seconds, not a measurement")
    args = parser.parse_args()
    mlflow_trials = 20
    if args.smoke:
        args.trials, args.steps, args.rows, mlflow_trials = 4, 20, 2_000, 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec_path = bench_spec(tmp, args.steps, args.trials)
        seq_seconds, n = sequential_loop(spec_path)
        cli_seconds, ray_seconds = through_cli(spec_path)
        slots = os.cpu_count()
        ideal = seq_seconds / min(slots, n)
        print(f"[1] {n} trials: plain loop {seq_seconds:.1f} s ({seq_seconds / n:.1f} s/trial, 1 thread); "
              f"fpr-sweep run {cli_seconds:.1f} s on {slots} slots (Ray start {ray_seconds:.1f} s of it)")
        print_overhead("this checkout", cli_seconds, ray_seconds, ideal, min(slots, n))
        shared = side_by_side_loops(spec_path, min(slots, n))
        print(f"    the same trials in {min(slots, n)} plain loops side by side: {shared:.1f} s = "
              f"{shared / ideal:.2f}x the loop per slot (what sharing the machine costs); "
              f"fpr-sweep run / side-by-side loops = {cli_seconds / shared:.2f}x")
        fresh = side_by_side_loops(spec_path, min(slots, n), warm=False)
        floor, floor_with_ray_start = fresh / ideal, (fresh + ray_seconds) / ideal
        print(f"    the same, each loop a fresh process timed from its start and not warmed up: {fresh:.1f} s "
              f"(what starting new processes adds: {fresh - shared:.1f} s)")
        print_floor(floor, floor_with_ray_start)
        if args.baseline:
            base_seconds, base_ray = through_cli(bench_spec(tmp / "baseline", args.steps, args.trials), args.baseline)
            print_overhead(f"baseline {args.baseline}", base_seconds, base_ray, ideal, min(slots, n))
        print(f"[2] Ray start-up (local, fresh process): {ray_startup():.1f} s")
        per_trial = mlflow_per_trial(tmp / "mlflow", mlflow_trials)
        print(f"[3] MLflow per trial (driver callback work, SQLite): {per_trial * 1000:.0f} ms "
              f"= {per_trial / (seq_seconds / n):.1%} of one trial's compute here")
        c = collection(tmp, args.rows)
        print(f"[4] {args.rows} rows in {args.rows // 10} trial files: write {c['write_trial_files']:.1f} s, "
              f"collect -> results.parquet {c['collect']:.2f} s ({c['file_mb']:.1f} MB), "
              f"read back pandas {c['pandas_read']:.2f} s, duckdb group-by {c['duckdb_groupby']:.2f} s")
        print(json.dumps({"loop_s": seq_seconds, "side_by_side_s": shared, "fresh_side_by_side_s": fresh,
                          "floor": floor, "floor_with_ray_start": floor_with_ray_start, "cli_s": cli_seconds, "ray_start_in_cli_s": ray_seconds,
                          "mlflow_ms_per_trial": per_trial * 1000, **c}))


if __name__ == "__main__":
    main()
