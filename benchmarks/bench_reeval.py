"""What `fpr-sweep eval` saves: one new OOD size on a finished sweep's kept models versus training the
sweep (not a test; run on a quiet machine).

1. `fpr-sweep run SPEC` in a fresh process into a temporary results dir (wall time, and the sum of
   the trials' own `train_seconds`);
2. the size of every kept model (models/<trial_id>.pt);
3. `fpr-sweep eval SWEEP --sizes SIZE` in a fresh process (wall time, Ray start included), and a
   second identical call, which must evaluate nothing.

Run: python benchmarks/bench_reeval.py [--spec sweeps/quickstart.yaml] [--size 21]
     (add --smoke to run the spec's --smoke budget: it checks every part works, the training side
     is then tiny, so the ratio says little)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> tuple[float, str]:
    """Run `fpr-sweep ARGS` in a fresh process; (wall seconds, output). Raises on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fpr-sweep {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/quickstart.yaml")
    parser.add_argument("--size", type=int, default=21, help="The new OOD size (every task gets it).")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        run_args = ["run", str(REPO / args.spec), "--results-dir", str(results)] + (["--smoke"] if args.smoke else [])
        train_wall, _ = cli(*run_args)
        (sweep_dir,) = [p for p in results.iterdir() if p.is_dir()]
        table = pd.read_parquet(sweep_dir / "results.parquet")
        trials = table.groupby("trial_id").first()
        models = {p.stem: p.stat().st_size for p in (sweep_dir / "models").glob("*.pt")}
        eval_args = ["eval", str(sweep_dir), "--sizes", str(args.size)]
        eval_wall, out = cli(*eval_args)
        again_wall, again = cli(*eval_args)
        added = len(pd.read_parquet(sweep_dir / "results.parquet")) - len(table)
    print(json.dumps({
        "spec": args.spec, "smoke": args.smoke, "trials": len(trials),
        "run_wall_s": round(train_wall, 1), "train_seconds_sum": round(float(trials.train_seconds.sum()), 1),
        "model_bytes": {"min": min(models.values()), "max": max(models.values()), "total": sum(models.values())},
        "eval_new_size": args.size, "eval_wall_s": round(eval_wall, 1), "rows_added": added,
        "eval_reported": next((line for line in out.splitlines() if line.startswith("evaluated ") and " trials at " in line), ""),
        "second_eval_wall_s": round(again_wall, 1), "second_eval_nothing": "nothing to evaluate" in again,
    }, indent=2))


if __name__ == "__main__":
    main()
