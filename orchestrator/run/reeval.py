"""`fpr-sweep eval`: score finished trials' saved models again, in parallel on Ray, no training:
on new sizes (``--sizes``) and under named halting protocols (``--halting``; docs/halting.md).

A trial's row is named by (split, halting protocol). For every selected trial with a saved model
(``models/<trial_id>.pt``), the plan lists the (split, protocol) pairs it lacks: with ``--halting``,
every split the trial already has plus the new sizes, under each listed protocol; with ``--sizes``
alone, the new sizes under the trial's own halting ('trained'). One Ray task per (trial, protocol)
loads the weights, builds the splits exactly as the trial did (same seeds, same exclusion of train
and 'id' instances: a split the trial has is the very same instances) and evaluates them with the
protocol applied to the trial's solver. The driver adds the rows to the trial's Parquet file (read
again just before, so two protocols of one trial never drop each other's rows) and to
results.parquet, and the metrics to the trial's existing MLflow child run (other protocols as
``acc/<split>/<protocol>``). Resumable: rows are written as each task returns, and a (trial, split,
protocol) already present is skipped unless ``force``. Under 'trained' the rows equal the trial's
own, bit for bit (tests/test_halting.py).
"""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from rich.console import Console

from fpr_core.config import BUILTIN_HALTING, TRAINED, ConfigError, HaltingProtocol, check_protocol_name
from fpr_core.split_names import ID_SPLIT, parse_split, split_name
from orchestrator.console import Heartbeat, duration
from orchestrator.store import parquet
from orchestrator.store.rows import evaluated_rows, row_key
from orchestrator.sweep.errors import EvalError
from orchestrator.sweep.layout import SweepDir

CapLaw = Literal["trained", "task", "linear", "quadratic", "fixed"]
CAP_LAWS: tuple[str, ...] = ("trained", "task", "linear", "quadratic", "fixed")
"""Loop cap law: ``trained`` follows each protocol's (the trial's own ``solver.eval_cap_law`` unless
the protocol sets one); the others replace it (fpr_core.evaluate.scaled_eval_cap) and name the rows'
protocol ``<protocol>_cap_<law>``: ``task`` the task's own law, ``linear`` eval_cap x size /
train_size (a k-times longer prefix needs about k times more steps), ``quadratic`` eval_cap x
(size / train_size)^2 (maze dead-end filling; DESIGN.md), ``fixed`` eval_cap at every size (FPRM's
fixed test-time budget)."""


@dataclass
class EvalJob:
    """One (trial, protocol) to evaluate: the trial's rows when planned and the splits it lacks."""

    trial_id: str
    rows: list[dict[str, Any]]
    halting: str
    splits: list[str]
    """'id' / 'ood_<size>' names to evaluate under ``halting``."""
    protocol: dict[str, Any]
    """The protocol's fields (HaltingProtocol), sent to the worker with the job."""

    @property
    def sizes(self) -> list[int]:
        """The OOD sizes among ``splits``."""
        return [parse_split(s, 0) for s in self.splits if s != ID_SPLIT]

    @property
    def label(self) -> str:
        r = self.rows[0]
        return f"{self.trial_id} {r['task']} {r['variant']} seed={r['seed']} \\[{self.halting}]"  # a literal [ in rich output


@dataclass
class EvalOutcome:
    """What an evaluation did."""

    evaluated: dict[str, list[str]] = field(default_factory=dict)
    """trial_id -> '<split>@<protocol>' evaluated now."""
    skipped: dict[str, str] = field(default_factory=dict)
    """trial_id -> why it was left out (no saved model, not ok, nothing new)."""
    failed: dict[str, str] = field(default_factory=dict)
    """'<trial_id>@<protocol>' -> the error of its evaluation task."""
    seconds: float = 0.0
    """Wall time from the first submitted task to the last row written (Ray start-up excluded)."""


@dataclass(frozen=True)
class EvalRequest:
    """What `fpr-sweep eval` was asked, as typed (checked by ``plan_request``)."""

    sizes: Optional[str] = None
    """New eval sizes, comma-separated ('25,33')."""
    halting: Optional[str] = None
    """Halting protocols, comma-separated ('trained,paper,long')."""
    cap_law: str = "trained"
    """One of CAP_LAWS."""
    trials: Optional[str] = None
    """Trial ids, comma-separated (default: every ok trial)."""
    force: bool = False
    """Evaluate pairs a trial already has again."""
    n_eval: Optional[int] = None
    """Instances per evaluated split (default: each trial's eval.n_eval)."""
    address: Optional[str] = None
    """The Ray cluster (default: $RAY_ADDRESS, else a local Ray)."""


def plan_request(sweep_dir: SweepDir, request: EvalRequest) -> tuple[list[EvalJob], dict[str, str]]:
    """``plan_jobs`` for a request, its options checked first (EvalError naming the option)."""
    if request.cap_law not in CAP_LAWS:
        raise EvalError(f"--cap-law: got {request.cap_law!r}, expected one of {', '.join(CAP_LAWS)}")
    if request.sizes is None and request.halting is None:
        raise EvalError("expected --sizes (new sizes under the trials' own halting), --halting (protocols, on "
                        "every split each trial has), or both")
    wanted = parse_sizes(request.sizes) if request.sizes is not None else []
    protocols = parse_halting(request.halting) if request.halting is not None else None
    ids = [t.strip() for t in request.trials.split(",") if t.strip()] if request.trials else None
    return plan_jobs(sweep_dir, wanted, ids, request.force, protocols, request.cap_law)


def parse_sizes(text: str) -> list[int]:
    """'25,33' -> [25, 33]; anything else raises EvalError naming what was expected."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
        raise EvalError(f"--sizes: got {text!r}, expected distinct positive integers separated by commas, e.g. 25,33")
    return sizes


def parse_halting(text: str) -> list[str]:
    """'trained,long' -> ['trained', 'long'] (names checked per trial by ``trial_protocols``)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or len(set(names)) != len(names):
        raise EvalError(f"--halting: got {text!r}, expected distinct protocol names separated by commas, "
                        f"e.g. trained,paper,long (built-ins: {', '.join(BUILTIN_HALTING)})")
    for name in names:
        try:
            check_protocol_name("--halting", name)
        except ConfigError as e:
            raise EvalError(str(e)) from None
    return names


def trial_protocols(row: dict[str, Any]) -> dict[str, HaltingProtocol]:
    """The protocols a trial can be evaluated under: the built-ins and its spec's ``eval.protocols``
    (read back from the row's ``cfg.eval.protocols`` cell, the str() of a plain mapping)."""
    from fpr_core.config import EvalConfig

    cell = row.get("cfg.eval.protocols")
    defined = None if cell in (None, "None") else ast.literal_eval(cell)
    return EvalConfig(protocols=defined).defined_protocols()


def _with_cap_law(name: str, protocol: HaltingProtocol, cap_law: str) -> tuple[str, HaltingProtocol]:
    if cap_law == "trained":
        return name, protocol
    return f"{name}_cap_{cap_law}", HaltingProtocol(protocol.tol, protocol.detect_cycles, cap_law, protocol.cap_scale)


def plan_jobs(sweep_dir: SweepDir, sizes: list[int], trial_ids: Optional[list[str]], force: bool,
              halting: Optional[list[str]] = None, cap_law: str = "trained"
              ) -> tuple[list[EvalJob], dict[str, str]]:
    """The (trial, protocol) jobs and the splits each lacks; and why the trials left out are.

    halting None: the new ``sizes`` under the trials' own halting (``cap_law`` applied); a list:
    every split each trial has plus the new sizes, under each protocol named."""
    known = set(parquet.finished_statuses(sweep_dir))  # trial files and compacted fragments
    unknown = sorted(set(trial_ids or ()) - known)
    if unknown:
        raise EvalError(f"--trials: no finished trial {unknown} in {sweep_dir} (see `fpr-sweep status`)")
    jobs, skipped = [], {}
    for tid in sorted(trial_ids or known):
        rows = parquet.read_trial(sweep_dir, tid).to_pylist()
        if rows[0]["status"] != "ok":
            skipped[tid] = f"status {rows[0]['status']}: nothing to evaluate"
            continue
        if not sweep_dir.model_file(tid).exists():
            skipped[tid] = "no saved model (trained with keep_models: none, or before models were kept)"
            continue
        protocols = trial_protocols(rows[0])
        missing = [n for n in (halting or ()) if n not in protocols]
        if missing:
            raise EvalError(f"--halting: unknown protocol {missing} for trial {tid}; expected some of "
                            f"{list(protocols)} (define more in the spec's eval.protocols)")
        have = {row_key(r) for r in rows}
        own = sorted({(r["split"], r["size"]) for r in rows if row_key(r)[1] == TRAINED},
                     key=lambda s: (s[0] != "id", s[1] or 0))
        new = [split_name(s) for s in sizes if s != rows[0]["train_size"]]
        wanted = (new if halting is None else
                  [s for s, _ in own] + [s for s in new if s not in {o for o, _ in own}])
        found = False
        for name in halting or [TRAINED]:
            label, protocol = _with_cap_law(name, protocols[name], cap_law)
            todo = [s for s in wanted if force or (s, label) not in have]
            if todo:
                jobs.append(EvalJob(tid, rows, label, todo, _fields(protocol)))
                found = True
        if not found:
            asked = ",".join(map(str, sizes)) if halting is None else ",".join(halting)
            skipped[tid] = f"already evaluated at {asked}" if halting is None else f"already evaluated under {asked}"
    return jobs, skipped


def _fields(protocol: HaltingProtocol) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(protocol)


def evaluate_saved_model(model_bytes: bytes, splits: list[str], halting: str, protocol: dict[str, Any],
                         n_eval: Optional[int] = None) -> dict[str, Any]:
    """Ray task body: load a saved model and evaluate it on ``splits`` ('id', 'ood_<size>'; ``n_eval``
    instances each, default the trial's eval.n_eval) under the protocol ``halting`` (its fields
    ``protocol``); returns plain data."""
    import dataclasses
    import io

    from fpr_core.device import select_device
    from fpr_core.experiment import dataset_infos, evaluate_splits, task_of
    from fpr_core.saved_model import read_saved
    from fpr_core.tasks import make_splits
    from orchestrator.run.trainable import worker_info
    from orchestrator.store.rows import split_fields

    saved = read_saved(io.BytesIO(model_bytes))
    cfg = saved.experiment_config()
    if halting not in BUILTIN_HALTING:  # the protocol travels with the job: a --cap-law variant has no spec entry
        defined = {k: v for k, v in (cfg.eval.protocols or {}).items() if k != halting}
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, protocols={**defined, halting: protocol}))
    if n_eval is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, n_eval=n_eval))
    device = select_device(cfg.train.device)
    task, train_size = task_of(cfg)
    sizes = [parse_split(s, 0) for s in splits if s != ID_SPLIT]
    # Sizes never share an instance (their inputs differ in shape or content), so building only the
    # sizes asked for gives the very instances the trial's full ladder gave.
    built = make_splits(task, train_size=train_size, ood_sizes=tuple(sizes), n_train=cfg.train.n_train,
                        n_eval=cfg.eval.n_eval, seed=cfg.seed)
    chosen = {name: built[name] for name in built if name in splits}
    model = saved.build("eval", device)
    evaluated = evaluate_splits(model, task, chosen, cfg, train_size, device, halting=halting)
    version = str(task.version)
    return {"splits": [split_fields(s) for s in evaluated],
            "datasets": [dict(dataclasses.asdict(i), generator_version=version) for i in dataset_infos(chosen)],
            "worker": {**worker_info(), "device": str(device)}}


def run_eval(sweep_dir: SweepDir, jobs: list[EvalJob], tracker: Any, resources: dict[str, float],
             console: Console, n_eval: Optional[int] = None) -> EvalOutcome:
    """Evaluate every job as one Ray task (as many at once as the cluster allows) and record each
    job's rows and metrics as soon as its task returns, with a progress line per job."""
    from orchestrator.run import ray_session

    outcome = EvalOutcome()
    task = ray_session.remote_tasks(evaluate_saved_model, resources)
    total = len(jobs)
    pairs = sum(len(j.splits) for j in jobs)
    console.print(f"evaluating {pairs} (split, protocol) pairs of {len({j.trial_id for j in jobs})} trials "
                  f"as {total} tasks", highlight=False)
    started = time.perf_counter()
    pending = {task.remote(sweep_dir.model_file(j.trial_id).read_bytes(), j.splits, j.halting,
                           j.protocol, n_eval): j for j in jobs}

    def describe() -> str:  # what the heartbeat shows between results (a job may take minutes)
        elapsed = time.perf_counter() - started
        done = total - len(pending)
        eta = f", ETA ~{duration(elapsed / done * len(pending))}" if done else ""
        return f"evaluating: {done}/{total} tasks done, {len(pending)} to go, {duration(elapsed)} elapsed{eta}"

    with Heartbeat(console, describe, HEARTBEAT_S) as heartbeat:
        while pending:
            ref = ray_session.next_done(list(pending), timeout_s=1.0)
            if ref is None:
                heartbeat.tick()
                continue
            job = pending.pop(ref)
            _report_job(sweep_dir, job, ref, tracker, outcome, f"[{total - len(pending)}/{total} "
                        f"{time.perf_counter() - started:.0f}s]", console)
            heartbeat.news()
    outcome.seconds = time.perf_counter() - started
    return outcome


HEARTBEAT_S = 30.0
"""In a pipe, `eval` prints a progress line after this long without a finished task."""


def _report_job(sweep_dir: SweepDir, job: EvalJob, ref: Any, tracker: Any, outcome: EvalOutcome, prefix: str,
                console: Console) -> None:
    """Record one finished task's rows and metrics and print its line (a failure leaves the trial as it was)."""
    from orchestrator.run import ray_session

    try:
        answer = ray_session.task_result(ref)
    except Exception as e:
        outcome.failed[f"{job.trial_id}@{job.halting}"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
        console.print(f"{prefix} [red]failed[/] {job.label}: {outcome.failed[f'{job.trial_id}@{job.halting}']}",
                      highlight=False)
        return
    record(sweep_dir, job, answer, tracker)
    outcome.evaluated.setdefault(job.trial_id, []).extend(f"{s}@{job.halting}" for s in job.splits)
    accs = ", ".join(f"{s['split']}={s['exact_acc']:.3f} (reach {s['reachability']:.2f}, capped "
                     f"{s['capped_share']:.2f})" for s in answer["splits"])
    console.print(f"{prefix} evaluated {job.label}: {accs}", highlight=False)


def record(sweep_dir: SweepDir, job: EvalJob, answer: dict[str, Any], tracker: Any) -> None:
    """One job's new rows into its trial's Parquet file (its rows read again now: another job of the
    same trial may have added some); its metrics and datasets into the trial's MLflow run."""
    from orchestrator.store.run_info import dataset_records

    current = parquet.read_trial(sweep_dir, job.trial_id)
    trial_rows = current.to_pylist() if current is not None else job.rows
    rows = evaluated_rows(trial_rows, answer["splits"], answer["worker"])
    parquet.write_trial_rows(sweep_dir, job.trial_id, rows)
    if tracker is None:
        return
    run_id = tracker.find_trial_run(job.trial_id)
    if run_id is None:
        return
    new_keys = {row_key(s) for s in answer["splits"]}
    new = [r for r in rows if row_key(r) in new_keys]
    first = job.rows[0]
    tracker.log_split_metrics(run_id, new, int(first.get("train_steps") or 0))
    tracker.log_datasets(run_id, dataset_records(first["task"], _params(first), int(first["seed"]),
                                                 answer["datasets"]))


def _params(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(row.get("task_params") or "{}")
