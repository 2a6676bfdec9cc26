"""Sweeps at cluster scale (issue 17): each figure next to its goal, before and after, in one run.

"Before" is today's code path as it was at BASELINE (extracted with `git archive` into a temporary
folder), "after" is this checkout; both run the same command on the same files in fresh processes,
one after the other, so machine load hits both alike. A "before" that cannot finish is stopped at
--before-timeout and shown as "> T s". Memory is the peak resident set of the measured process.

1. validate / run --dry-run on a 10^6-cell grid (goal < 10 s).
2. run on a 10^5-trial sweep: seconds until the first trial starts (goal < 30 s), the driver's peak
   memory until then (goal < 2 GB), and seconds from Ctrl-C (SIGINT) to exit.
3. the size guard: run without --yes on the 10^5-trial sweep (goal: refused, exit 2, trial count and
   compute stated).
4. results at 10^5 trials (rows copied from the committed CPU study, in the project's schema):
   collect (goal < 2x one pyarrow.dataset scan of the same files, < 1 GB peak), status (goal < 5 s),
   report at 10^4 trials (goal < 60 s). "Before" collect and status run on 10^4 uncompacted trial
   files (10^5 would need tens of GB: 10^4 files already took 3.8 GB).

Run: python benchmarks/bench_scale.py [--smoke]   (--smoke: 10^3 cells, 10^2 trials, short timeouts, and
the "before" first trial left out: it starts a second Ray)
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
BASELINE = "6d7ad83"
"""main before issue 17 (grid_search list, per-cell validation, per-file collect)."""
TEMPLATE = REPO / "results" / "ood_generalization_cpu_previous" / "results.parquet"
"""Committed rows whose shapes (per-instance lists, cfg columns) the synthetic table copies."""
TINY_BASE = {"model": {"dim": 16, "heads": 2}, "solver": {"train_cap": 6, "eval_cap": 8},
             "grad": "truncated:2",
             "train": {"steps": 10, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 5,
                       "warmup": 2},
             "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2}}


# ---------------------------------------------------------------- processes

@dataclass
class Measured:
    seconds: float
    peak_mb: float
    rc: Optional[int]
    """None when stopped at the timeout."""
    out: str = ""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "RAY_ADDRESS": "", "COLUMNS": "160"}


TIME = Path("/usr/bin/time")
"""GNU time reports the peak RSS of the command alone (a child forked from this process would
inherit this process's peak in its own ru_maxrss)."""


def measure(argv: list[str], tree: Path, timeout: float, cwd: Optional[Path] = None) -> Measured:
    """Run a command to its end (or the timeout); wall seconds and its own peak RSS."""
    with tempfile.TemporaryFile("w+") as log, tempfile.NamedTemporaryFile("r") as peak:
        wrapped = [str(TIME), "-f", "%M", "-o", peak.name, *argv] if TIME.exists() else argv
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd or tree, env=_env(tree), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: Optional[int] = proc.wait(timeout=timeout)
            seconds = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            proc.wait()
            rc, seconds = None, timeout
        text = Path(peak.name).read_text().split()
        peak_mb = int(text[-1]) / 1024 if text and text[-1].isdigit() else float("nan")
        log.seek(0)
        return Measured(seconds, peak_mb, rc, log.read())


def kill_session(sid: int) -> bool:
    """SIGKILL every process of the session the command was started in (the driver, and the Ray
    processes it started, which put themselves in process groups of their own)."""
    killed = False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the command: state ppid pgrp session ...
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
    return killed


def cli(tree: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class FirstTrial:
    seconds: Optional[float]
    """Until the first trial started; None if none did before the timeout."""
    peak_mb: float
    stop_seconds: float
    """From SIGINT to the driver's exit."""


STARTED = re.compile(r"(?m)(: |^\[\d+/\d+\] )started\b")
"""A trial's start line: `[0/100] started  <task> ...` now, `...: started` in BASELINE's code."""


def first_trial(tree: Path, spec: Path, extra: list[str], timeout: float) -> FirstTrial:
    """Start `run`, wait for the first 'started' line, send SIGINT, time the exit."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cli(tree, "run", str(spec), *extra), cwd=tree, env=_env(tree), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        first, peak = None, 0.0
        while proc.poll() is None and time.perf_counter() - started < timeout:
            peak = max(peak, _rss_mb(proc.pid))
            if STARTED.search(Path(log.name).read_text()):
                first = time.perf_counter() - started
                break
            time.sleep(0.2)
        interrupted = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
            stop = time.perf_counter() - interrupted
        except subprocess.TimeoutExpired:
            stop = float("inf")  # Ctrl-C did not stop it
        kill_session(proc.pid)  # the driver if still there, and Ray's processes if any outlived it
        proc.wait()
        if proc.returncode not in (0, 1, -2, 130) and first is not None:
            raise SystemExit(f"run failed:\n{Path(log.name).read_text()[-3000:]}")
        return FirstTrial(first, peak, stop)


# ---------------------------------------------------------------- inputs

def baseline_tree(scratch: Path) -> Optional[Path]:
    """The code at BASELINE, or None when this is not a git checkout."""
    tree = scratch / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "orchestrator", "fpr_core"],
                             capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def grid_spec(path: Path, name: str, n_axes: int, seeds: int, results: Path) -> Path:
    """One task, ``n_axes`` axes of 10 values in five config sections, ``seeds`` seeds."""
    ten = range(10)
    axes = {"train.lr": [round(0.001 * (i + 1), 4) for i in ten], "solver.tol": [round(0.001 * (i + 1), 4) for i in ten],
            "eval.power_iters": [i + 1 for i in ten], "model.mlp_ratio": [1.0 + 0.5 * i for i in ten],
            "train.seed": list(ten), "grad.k": [i + 1 for i in ten]}
    spec = {"name": name, "results_dir": str(results),
            "tasks": [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
            "axes": dict(list(axes.items())[:n_axes]), "base": TINY_BASE, "seeds": list(range(seeds))}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def synthetic_trials(sweep: Path, n_trials: int, compact_every: Optional[int]) -> float:
    """Write ``n_trials`` trial files copied from the committed study's trials (new ids and seeds);
    with ``compact_every``, compact them as the driver does while a sweep runs. Returns seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from orchestrator.store import parquet
    from orchestrator.sweep.layout import SweepDir

    template = pq.read_table(TEMPLATE)
    own = {b"fpr_sweep.schema_version": parquet.results_schema().metadata[b"fpr_sweep.schema_version"]}
    ids = pc.unique(template.column("trial_id")).to_pylist()
    by_trial = [template.filter(pc.equal(template.column("trial_id"), t)) for t in ids]
    layout = SweepDir.of(sweep)
    layout.trials.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pending: list[str] = []
    for k in range(n_trials):
        base = by_trial[k % len(by_trial)]
        trial_id = f"{k:010x}"
        table = (base.set_column(base.schema.get_field_index("trial_id"), "trial_id",
                                 pa.array([trial_id] * base.num_rows))
                 .set_column(base.schema.get_field_index("seed"), "seed",
                             pa.array([k // len(by_trial)] * base.num_rows, pa.int64())))
        meta = {**(table.schema.metadata or {}), **own, b"fpr_sweep.trial_id": trial_id.encode()}
        pq.write_table(table.replace_schema_metadata(meta), layout.trial_file(trial_id))
        pending.append(trial_id)
        if compact_every and len(pending) >= compact_every:
            parquet.compact(layout, pending)
            pending = []
    return time.perf_counter() - started


# ---------------------------------------------------------------- figures

def show(figure: str, goal: str, before: str, after: str) -> None:
    print(f"{figure:<46} goal {goal:<14} before {before:<26} after {after}")


def fmt(m: Measured, ok_rc: int = 0) -> str:
    if m.rc is None:
        return f"> {m.seconds:.0f} s (stopped)"
    flag = "" if m.rc == ok_rc else f" rc={m.rc}"
    return f"{m.seconds:.1f} s, {m.peak_mb:.0f} MB{flag}"


def expansion(before: Optional[Path], scratch: Path, cells_exp: int, timeout: float) -> None:
    seeds = 10 if cells_exp >= 4 else 1
    spec = grid_spec(scratch / "cells.yaml", "cells", cells_exp - (1 if seeds == 10 else 0), seeds, scratch / "r")
    n = f"10^{cells_exp}"
    for label, args in (("validate", ["validate", str(spec)]),
                        ("run --dry-run", ["run", str(spec), "--dry-run", "--results-dir", str(scratch / "r")])):
        after = measure(cli(REPO, *args), REPO, timeout * 4)
        old = measure(cli(before, *args), before, timeout) if before else None
        lines = len(after.out.splitlines())
        show(f"[1] {label} on {n} cells", "< 10 s", fmt(old) if old else "n/a", f"{fmt(after)}, {lines} lines")


def first_trial_figures(before: Optional[Path], scratch: Path, trials_exp: int, timeout: float) -> None:
    seeds = 10 if trials_exp >= 2 else 1
    spec = grid_spec(scratch / "trials.yaml", "trials", trials_exp - (1 if seeds == 10 else 0), seeds, scratch / "runs")
    n = f"10^{trials_exp}"
    guard_spec = grid_spec(scratch / "guard.yaml", "guard", 4, 10, scratch / "runs")  # 10^5: above the guard
    guard = measure(cli(REPO, "run", str(guard_spec)), REPO, 120)
    said = re.search(r"expands to ([0-9,]+ trials, [0-9,]+ training steps)", guard.out)
    show("[3] size guard, run without --yes on 10^5", "refused", "none (the run starts)",
         f"exit {guard.rc} in {guard.seconds:.1f} s: {said.group(1) if said else guard.out[-200:]}")
    after = first_trial(REPO, spec, ["--yes"], timeout * 2)
    old = first_trial(before, spec, [], timeout) if before else None
    shutil.rmtree(scratch / "runs", ignore_errors=True)

    def text(f: Optional[FirstTrial], limit: float) -> str:
        if f is None:
            return "n/a"
        start = f"{f.seconds:.1f} s" if f.seconds is not None else f"none in {limit:.0f} s"
        return f"{start}, {f.peak_mb:.0f} MB"

    show(f"[2] first trial starts, {n}-trial run", "< 30 s, < 2 GB", text(old, timeout), text(after, timeout * 2))
    show("[2] Ctrl-C to exit", "stops", f"{old.stop_seconds:.1f} s" if old else "n/a", f"{after.stop_seconds:.1f} s")


COLLECT = ("from pathlib import Path; import sys; from orchestrator.store import parquet as r; "
           "r.collect(Path(sys.argv[1]))")
SCAN = ("from pathlib import Path; import sys; import pyarrow.dataset as ds; from orchestrator.store import parquet as r;"
        " s = Path(sys.argv[1]); files = [str(p) for p in getattr(r, 'fragment_files', lambda s: [])(s) + r.trial_files(s)];"
        " t = ds.dataset(files, schema=r.results_schema(), format='parquet').to_table(); print(t.num_rows)")


def results_figures(before: Optional[Path], scratch: Path, trials_exp: int, report_exp: int, timeout: float) -> None:
    n = 10 ** trials_exp
    sweep = scratch / "table" / "scale"
    write_s = synthetic_trials(sweep, n, compact_every=1000)
    scan = measure([sys.executable, "-c", SCAN, str(sweep)], REPO, timeout * 4)
    after = measure([sys.executable, "-c", COLLECT, str(sweep)], REPO, timeout * 4)
    status = measure(cli(REPO, "status", str(sweep)), REPO, timeout * 4)
    old_n = min(n, 10_000)
    old_sweep = scratch / "old-table" / "scale"
    synthetic_trials(old_sweep, old_n, compact_every=None)
    old = measure([sys.executable, "-c", COLLECT, str(old_sweep)], before, timeout) if before else None
    old_status = measure(cli(before, "status", str(old_sweep)), before, timeout) if before else None
    print(f"    ({n} trial files written in {write_s:.0f} s, compacted every 1000 as a running sweep does; "
          f"before: {old_n} uncompacted files)")
    show(f"[4] collect, 10^{trials_exp} trials", "< 2x scan, < 1 GB", fmt(old) if old else "n/a",
         f"{fmt(after)} = {after.seconds / scan.seconds:.2f}x one dataset scan ({scan.seconds:.1f} s, "
         f"{scan.peak_mb:.0f} MB)")
    show(f"[4] status, 10^{trials_exp} trials", "< 5 s", fmt(old_status) if old_status else "n/a", fmt(status))
    report_sweep = scratch / "report" / "scale"
    synthetic_trials(report_sweep, 10 ** report_exp, compact_every=1000)
    measure([sys.executable, "-c", COLLECT, str(report_sweep)], REPO, timeout * 4)
    after_report = measure(cli(REPO, "report", str(report_sweep)), REPO, timeout * 4)
    old_report = measure(cli(before, "report", str(report_sweep)), before, timeout) if before else None
    show(f"[4] report, 10^{report_exp} trials", "< 60 s", fmt(old_report) if old_report else "n/a", fmt(after_report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="10^3 cells, 10^2 trials, short timeouts, no 'before' Ray start")
    parser.add_argument("--before-timeout", type=float, default=None,
                        help="seconds before a 'before' command is stopped (default 120, smoke 30)")
    parser.add_argument("--skip-run", action="store_true", help="skip figures 2 and 3 (start Ray twice)")
    parser.add_argument("--results-exp", type=int, default=None, help="10^N trial files for collect/status "
                                                                     "(default 5, smoke 2)")
    parser.add_argument("--report-exp", type=int, default=None, help="10^N trials for report (default 4, smoke 2)")
    parser.add_argument("--only", choices=["expansion", "run", "results"], default=None, help="one group of figures")
    args = parser.parse_args()
    cells_exp, trials_exp, report_exp = (3, 2, 2) if args.smoke else (6, 5, 4)
    results_exp = args.results_exp or trials_exp
    report_exp = args.report_exp or report_exp
    timeout = args.before_timeout or (30.0 if args.smoke else 120.0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = Path(tmp)
        before = baseline_tree(scratch)
        print(f"before = {BASELINE if before else 'unavailable (not a git checkout)'}, after = this checkout; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        if args.only in (None, "expansion"):
            expansion(before, scratch, cells_exp, timeout)
        if args.only in (None, "run") and not args.skip_run:
            first_trial_figures(None if args.smoke else before, scratch, trials_exp, timeout)
        if args.only in (None, "results"):
            results_figures(before, scratch, results_exp, report_exp, timeout)


if __name__ == "__main__":
    main()
