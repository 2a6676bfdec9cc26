"""`fpr-sweep eval`: score finished trials' saved models on new sizes, in parallel on Ray, no training.

For every selected trial with a saved model (``models/<trial_id>.pt``) and a size it was not yet
evaluated at, one Ray task loads the weights, builds the 'ood_<size>' splits exactly as a trial
with that size in its ladder would have (same seeds, same exclusion of train and 'id' instances)
and evaluates them. The driver adds the rows (same schema, new ``ood_<size>`` splits) to the trial's
Parquet file and to results.parquet, and the metrics (flat ``acc/ood_<size>`` and the size series)
to the trial's existing MLflow child run. Idempotent: a size a trial already has is skipped unless
``force``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import ray
from rich.console import Console

from orchestrator.store import parquet as results
from orchestrator.store.rows import evaluated_rows
from orchestrator.sweep.layout import SweepDir

CapLaw = Literal["trained", "task", "linear", "quadratic", "fixed"]
CAP_LAWS: tuple[str, ...] = ("trained", "task", "linear", "quadratic", "fixed")
"""Loop cap on the new sizes: ``trained`` follows the trial's own ``solver.eval_cap_law``; the others
replace it (fpr_core.evaluate.scaled_eval_cap): ``task`` the task's own law, ``linear`` eval_cap x
size / train_size (a k-times longer prefix needs about k times more steps), ``quadratic`` eval_cap x
(size / train_size)^2 (maze dead-end filling; DESIGN.md), ``fixed`` eval_cap at every size (FPRM's
fixed test-time budget)."""


class EvalError(ValueError):
    """The evaluation cannot start (bad sizes, no saved models); the message is for the user."""


@dataclass
class EvalJob:
    """One trial to re-evaluate: its rows so far and the sizes it still lacks."""

    trial_id: str
    rows: list[dict[str, Any]]
    sizes: list[int]

    @property
    def label(self) -> str:
        r = self.rows[0]
        return f"{self.trial_id} {r['task']} {r['variant']} seed={r['seed']}"


@dataclass
class EvalOutcome:
    """What an evaluation did."""

    evaluated: dict[str, list[int]] = field(default_factory=dict)
    """trial_id -> sizes evaluated now."""
    skipped: dict[str, str] = field(default_factory=dict)
    """trial_id -> why it was left out (no saved model, not ok, nothing new)."""
    failed: dict[str, str] = field(default_factory=dict)
    """trial_id -> the error of its evaluation task."""
    seconds: float = 0.0
    """Wall time from the first submitted task to the last row written (Ray start-up excluded)."""


def parse_sizes(text: str) -> list[int]:
    """'25,33' -> [25, 33]; anything else raises EvalError naming what was expected."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
        raise EvalError(f"--sizes: got {text!r}, expected distinct positive integers separated by commas, e.g. 25,33")
    return sizes


def plan_jobs(sweep_dir: Path, sizes: list[int], trial_ids: Optional[list[str]], force: bool
              ) -> tuple[list[EvalJob], dict[str, str]]:
    """The trials to evaluate and the sizes each lacks; and why the others are left out."""
    known = set(results.finished_statuses(sweep_dir))  # trial files and compacted fragments
    unknown = sorted(set(trial_ids or ()) - known)
    if unknown:
        raise EvalError(f"--trials: no finished trial {unknown} in {sweep_dir} (see `fpr-sweep status`)")
    jobs, skipped = [], {}
    for tid in sorted(trial_ids or known):
        rows = results.read_trial(sweep_dir, tid).to_pylist()
        if rows[0]["status"] != "ok":
            skipped[tid] = f"status {rows[0]['status']}: nothing to evaluate"
        elif not SweepDir(sweep_dir).model_file(tid).exists():
            skipped[tid] = "no saved model (trained with keep_models: none, or before models were kept)"
        else:
            have = {r["split"] for r in rows}
            todo = [s for s in sizes if s != rows[0]["train_size"] and (force or f"ood_{s}" not in have)]
            if todo:
                jobs.append(EvalJob(tid, rows, todo))
            else:
                skipped[tid] = f"already evaluated at {','.join(map(str, sizes))}"
    return jobs, skipped


def evaluate_saved_model(model_bytes: bytes, sizes: list[int], cap_law: str,
                         n_eval: Optional[int] = None) -> dict[str, Any]:
    """Ray task body: load a saved model, evaluate it on ``sizes`` (``n_eval`` instances each, default
    the trial's eval.n_eval) and return plain data."""
    import dataclasses
    import io

    from fpr_core.device import select_device
    from fpr_core.experiment import evaluate_sizes, task_of
    from fpr_core.saved_model import read_saved
    from orchestrator.run.trainable import worker_info
    from orchestrator.store.rows import split_fields

    saved = read_saved(io.BytesIO(model_bytes))
    cfg = saved.experiment_config()
    if cap_law != "trained":
        cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, eval_cap_law=cap_law))
    if n_eval is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, n_eval=n_eval))
    device = select_device(cfg.train.device)
    splits, infos = evaluate_sizes(saved.build("eval", device), cfg, tuple(sizes), device=device)
    version = str(task_of(cfg)[0].version)
    return {"splits": [split_fields(s) for s in splits],
            "datasets": [dict(dataclasses.asdict(i), generator_version=version) for i in infos],
            "worker": {**worker_info(), "device": str(device)}}


def run_eval(sweep_dir: Path, jobs: list[EvalJob], cap_law: str, tracker: Any, resources: dict[str, float],
             console: Console, n_eval: Optional[int] = None) -> EvalOutcome:
    """Evaluate every job as one Ray task (as many at once as the cluster allows) and record each
    trial's rows and metrics as soon as its task returns."""
    outcome = EvalOutcome()
    task = ray.remote(evaluate_saved_model).options(num_cpus=resources.get("cpu", 1),
                                                    num_gpus=resources.get("gpu", 0), max_retries=1)
    started = time.perf_counter()
    pending = {task.remote(SweepDir(sweep_dir).model_file(j.trial_id).read_bytes(), j.sizes, cap_law, n_eval): j
               for j in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            answer = ray.get(done[0])
        except Exception as e:  # a failed evaluation leaves the trial as it was
            outcome.failed[job.trial_id] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
            console.print(f"[red]failed[/] {job.label}: {outcome.failed[job.trial_id]}", highlight=False)
            continue
        record(sweep_dir, job, answer, tracker)
        outcome.evaluated[job.trial_id] = job.sizes
        accs = ", ".join(f"{s['split']}={s['exact_acc']:.3f}" for s in answer["splits"])
        console.print(f"evaluated {job.label}: {accs}", highlight=False)
    outcome.seconds = time.perf_counter() - started
    return outcome


def record(sweep_dir: Path, job: EvalJob, answer: dict[str, Any], tracker: Any) -> None:
    """One trial's new rows into its Parquet file; its metrics and datasets into its MLflow run."""
    from orchestrator.store.run_info import dataset_records

    rows = evaluated_rows(job.rows, answer["splits"], answer["worker"])
    results.write_trial_rows(sweep_dir, job.trial_id, rows)
    if tracker is None:
        return
    run_id = tracker.find_trial_run(job.trial_id)
    if run_id is None:
        return
    new = [r for r in rows if r["split"] in {s["split"] for s in answer["splits"]}]
    first = job.rows[0]
    tracker.log_split_metrics(run_id, new, int(first.get("train_steps") or 0))
    tracker.log_datasets(run_id, dataset_records(first["task"], _params(first), int(first["seed"]),
                                                 answer["datasets"]))


def _params(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(row.get("task_params") or "{}")
