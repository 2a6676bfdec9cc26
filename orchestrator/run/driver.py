"""Runs a planned sweep on Ray Tune: the run loop, Tuner build and restore, and what a run ends with.

``run_sweep`` starts (or joins) Ray (ray_session.py), runs one Tuner over the grid's trials (or one Tuner with an
Optuna study per grid cell when the spec has a ``search`` section; see expand.py and
tune_space.py), and on the driver turns every finished trial into MLflow runs and a Parquet rows
file (hub.py). Re-running the same
command resumes: ``Tuner.can_restore`` -> ``Tuner.restore(..., resume_errored=True)``; trials whose
rows file already holds a final status are never trained again.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from rich.console import Console
from rich.markup import escape

from orchestrator.console import SweepProgress
from orchestrator.run import ray_session
from orchestrator.run import hub as hubs
from orchestrator.run import tune_api, tune_space
from orchestrator.run import trust
from orchestrator.run.hub import DriverHub, ForwardingCallback
from orchestrator.run.members import member_views
from orchestrator.run.session import RunOptions, RunSession, SweepOutcome
from orchestrator.run.signals import StopRequests
from orchestrator.run.trainable import CHECKPOINTS_KEPT, fpr_trainable
from orchestrator.store import parquet
from orchestrator.store.rows import SweepMeta
from orchestrator.store.run_info import sweep_summary
from orchestrator.store.schema import FINAL_STATUSES
from orchestrator.store.space import DiskFull, is_disk_full
from orchestrator.sweep.expand import Cell, resolve, trial_of_config
from orchestrator.sweep.errors import LockLost, SweepError
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import SweepPlan
from orchestrator.sweep.spec import SweepSpec

if TYPE_CHECKING:  # mlflow loads in the thread that opens the store, not at import
    from orchestrator.store.tracking import SweepTracker


# ---------------------------------------------------------------- Tuners

def _dirname(tune_trial: Any) -> str:
    t = trial_of_config(tune_trial.config)
    return f"{t.cell.task}-{t.trial_id}"


@dataclass
class Study:
    """One Tuner: a Tune experiment name and what to run in it."""

    name: str
    samples: int
    """Tune's num_samples: the grid's size (the feed ends sooner) or a search's samples per cell."""
    cell: Optional[Cell] = None
    """The grid cell a search study tunes; None for the grid feed."""


def plan_studies(spec: SweepSpec, plan: SweepPlan, done: dict[str, str]) -> Iterator[Study]:
    """Grid sweeps: one Tuner fed the cells not finished yet. Search sweeps: one Tuner per cell."""
    h = spec.spec_hash()
    if spec.search is None:
        if any(done.get(c.cell_id) not in FINAL_STATUSES for c in plan.cells()):
            yield Study(f"grid-{h}", len(plan.grid))
        return
    for c in plan.cells():
        yield Study(f"search-{h}-{c.cell_id}", spec.search.num_samples, c)


SIZE_GUARD = 10_000
"""Sweeps with more trials than this need ``--yes`` or the spec's ``max_trials``."""


def check_size(plan: SweepPlan, yes: bool) -> None:
    """Refuse a sweep larger than intended, saying how many trials and how much training it holds."""
    spec, grid = plan.spec, plan.grid
    n = grid.trial_count()
    limit = spec.max_trials
    if (limit is None and (n <= SIZE_GUARD or yes)) or (limit is not None and n <= limit):
        return
    cost = (f"{n:,} trials, {grid.train_steps():,} training steps in all ({grid.train_examples():,} training "
            f"examples), each trial holding {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU")
    if limit is not None:
        raise SweepError(f"max_trials: the spec allows {limit:,} trials but expands to {cost}; raise max_trials "
                         "or shrink the grid.")
    raise SweepError(f"this sweep expands to {cost}, above the {SIZE_GUARD:,}-trial guard; pass --yes, or set "
                     f"max_trials: {n} in the spec, to run it (`fpr-sweep run SPEC --dry-run` lists the trials).")


def experiment_state_readable(path: str) -> bool:
    """False when the newest Tune experiment-state file under a local ``path`` is not valid JSON.

    A driver SIGKILLed while Tune rewrites that file leaves it truncated; ``Tuner.restore`` then
    logs "Failed to restore the run state" and goes on to crash on a half-built trial list.
    Remote storage (``s3://``...) is trusted: its uploads are whole-object."""
    if "://" in path:
        return True
    states = sorted(Path(path).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return False
    try:
        json.loads(states[-1].read_text())
    except (ValueError, OSError):
        return False
    return True


DISK_FULL_DRAIN_S = 5.0
"""After a full disk, MLflow writes are given this long (the store may sit on the same disk)."""
ASIDE_MARK = ".unreadable-"
"""Suffix of Tune state folders set aside (unreadable or untrusted); removed once a run completes."""


def _set_aside(path: str, reason: str, console: Console) -> None:
    aside = f"{path}{ASIDE_MARK}{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, aside)
    console.print(f"[yellow]Tune's saved state in {path} is not restored: {reason}. Moved it to {aside}; the "
                  "unfinished trials start again from scratch, finished trials keep their rows.[/]", highlight=False)


def restorable(path: str) -> Optional[str]:
    """None when Tune's state at ``path`` may be restored, else why not. Local state must be whole
    JSON and signed by this user (run/trust.py: restoring unpickles it); a URI's store is trusted
    through its own access control."""
    if "://" in path:
        return None
    if not experiment_state_readable(path):
        return "its experiment state is truncated or missing (a write was cut short)"
    elsewhere = trust.saved_elsewhere(Path(path))
    if elsewhere:
        return (f"it was saved in {elsewhere}, before the sweep folder was moved or copied here (Tune's restored "
                "trials would go on writing there)")
    return trust.untrusted_reason(Path(path))


def _tuner(plan: SweepPlan, study: Study, storage: str, meta: SweepMeta, max_concurrent: Optional[int],
           skip: frozenset[str], console: Console):
    spec = plan.spec
    trainable = tune_api.with_resources(fpr_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = f"{storage.rstrip('/')}/{study.name}"
    if tune_api.Tuner.can_restore(path):
        reason = restorable(path)
        if reason is None:
            try:
                return tune_api.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True), True
            except Exception as e:  # e.g. a 0-byte tuner.pkl left by a full disk
                reason = f"Tune could not read it ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        _set_aside(path, reason, console)
    tune_config = tune_api.TuneConfig(num_samples=study.samples,
                                  search_alg=tune_space.search_algorithm(spec, study.cell, plan.smoke, skip),
                                  scheduler=tune_space.scheduler(spec, plan.grid),
                                  max_concurrent_trials=max_concurrent, reuse_actors=True,
                                  trial_dirname_creator=_dirname, trial_name_creator=_dirname)
    run_config = tune_api.RunConfig(
        name=study.name, storage_path=storage, verbose=0, callbacks=[ForwardingCallback()],
        failure_config=tune_api.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune_api.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT))
    return tune_api.Tuner(trainable, param_space=tune_space.param_space(spec, study.cell, meta),
                      tune_config=tune_config, run_config=run_config), False


def reconcile(hub: DriverHub, exp_path: str) -> int:
    """Write rows the live callbacks missed (e.g. the driver died between a trial's end and its
    rows file); returns how many trials are still unfinished."""
    unfinished = 0
    for tt in (view for tune_trial in tune_api.experiment_trials(exp_path) for view in member_views(tune_trial)):
        if tt.status == "TERMINATED":
            hub.guarded("reconcile", hub.completed, tt)
            if hub.meta.keep_models != "none":
                hub.guarded("keeping the model", hub.keep_model, tt, tt.checkpoint)
        elif tt.status == "ERROR":
            t = hub.trial(tt)
            table = parquet.read_trial(hub.sweep_dir, t.trial_id)
            if table is None:
                hub.guarded("reconcile", hub.errored, tt)
        elif not hub.is_final(hub.trial(tt)):  # rows can arrive just before an interrupt
            unfinished += 1
    return unfinished


# ---------------------------------------------------------------- the run

def log_sweep_outcome(tracker: SweepTracker, sweep_dir: SweepDir) -> None:
    """The parent run's summary metrics (trials per status, best OOD accuracy per task) and files
    (the spec and results.parquet; `fpr-sweep report` adds the report and its plots)."""
    if sweep_dir.results.exists():
        table = parquet.read_current(sweep_dir).select(["trial_id", "task", "variant", "split", "size",
                                                             "halting", "status", "exact_acc"])
        tracker.log_sweep_summary(*sweep_summary(table.to_pylist()))
    tracker.log_sweep_files([sweep_dir.spec_copy, sweep_dir.results])


def reconcile_tracking(tracker: SweepTracker, hub: DriverHub) -> None:
    """After every run, the MLflow runs are made to agree with the table (finished trials without
    a run, RUNNING runs of finished trials, final metrics or models a torn spool lost): see
    SweepTracker.reconcile. Each repair is named among the run's warnings."""
    sweep_dir = hub.sweep_dir
    if not sweep_dir.results.exists():
        return
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in parquet.read_results(sweep_dir).to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row)
    models = {t: sweep_dir.model_file(t) for t in sweep_dir.kept_models()}
    hub.warnings.extend(tracker.reconcile(by_trial, models))


def _abandon(opening) -> None:
    """A run refused before its first trial leaves no RUNNING parent run behind (KILLED: the same
    command resumes it)."""
    try:
        opening.result().end_sweep("KILLED")
    except Exception:  # the tracker itself failed to open: nothing was started
        pass


def run_sweep(session: RunSession, console: Console) -> SweepOutcome:
    """Run (or resume) the session's sweep (its folder checked and held: launch.py). Every write is
    fenced by the session's lock (``lock.check`` raises LockLost once another driver took the
    sweep over); a lost local Ray releases the lock and ends the driver at once (RayWatch)."""
    from orchestrator.store.provenance import git_commit

    ray_session.quiet_tune()
    plan, opts, sweep_dir = session.plan, session.opts, session.sweep_dir
    spec, name = plan.spec, plan.name
    meta = SweepMeta(name, spec.spec_hash(), git_commit(), spec.keep_models)
    done = parquet.finished_statuses(sweep_dir)
    skip = frozenset(t for t, st in done.items() if st in FINAL_STATUSES)
    studies = plan_studies(spec, plan, done)
    first = next(studies, None)
    studies = itertools.chain([first], studies) if first is not None else iter(())
    total = plan.trial_count
    already = sum(1 for c in plan.cells() if c.cell_id in skip) if spec.search is None and skip else 0
    outcome = SweepOutcome(sweep_dir, session.tracking_uri)
    # Opening a new SQLite store runs MLflow's migrations (~10 s here): overlap it with Ray's start.
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(session.open_tracker, meta)
        try:
            if first is not None:
                outcome.ray_start_seconds = ray_session.ensure_ray(opts.address, console)
                to_run = max(1, total - already)
                ray_session.check_resources(spec, min(to_run, opts.max_concurrent or spec.max_concurrent or to_run),
                                            console, opts.node_timeout_s)
        except SweepError:
            _abandon(opening)
            raise
        try:
            tracker = opening.result()
        except Exception as e:  # e.g. a new MLflow store on a full disk: refused before any trial
            if not is_disk_full(e):
                raise
            raise SweepError(str(DiskFull(sweep_dir, 0))) from None
    if first is not None:
        ray_session.drop_disk_full_logs()
    variants = variants_in_order(plan)
    tracker.set_run_colours(variants, list(dict.fromkeys(s for t in plan.grid.tasks for s in t.seeds)))
    storage = sweep_dir.tune_storage(opts.storage)
    progress = SweepProgress(console, total, already, title=name, variants=variants,
                             trial_seconds=mean_trial_seconds(sweep_dir) if skip else None)
    with StopRequests() as stops:
        hub = DriverHub(sweep_dir, meta, tracker, progress, console, done_before=skip, stops=stops,
                        fence=session.lock.check)
        hubs.activate(hub)
        progress.start()

        def cleanup() -> None:
            progress.stop()
            hub.live.close()
            session.lock.release()

        try:
            with ray_session.RayWatch(lambda what: ray_session.exit_ray_lost(what, opts.resume_command, cleanup)):
                outcome.unfinished = _run_studies(plan, studies, storage, meta, opts, skip, hub, console)
        finally:
            progress.stop()
            if hub.lock_lost is None:  # live.json is the new holder's now
                hub.live.close()
            hubs.activate(None)
    return _finish(outcome, hub, tracker, stops, storage, console, plan)


VARIANTS_NAMED = 10_000
"""Variant labels numbered up front (their short codes in the progress lines), in the spec's order."""


def variants_in_order(plan: SweepPlan) -> list[str]:
    """The grid's variant labels in the spec's order (task, then grid cell), the first VARIANTS_NAMED."""
    from orchestrator.sweep.expand import variant_label

    labels: dict[str, None] = {}
    for task in plan.grid.tasks:
        for combo in itertools.product(*task.values):
            labels[variant_label(dict(zip(task.keys, combo)))] = None
            if len(labels) >= VARIANTS_NAMED:
                return list(labels)
    return list(labels)


def mean_trial_seconds(sweep_dir: SweepDir) -> Optional[float]:
    """Mean training + evaluation seconds of the trials finished so far (None without any)."""
    try:
        table = parquet.read_current(sweep_dir).select(["trial_id", "train_seconds", "eval_seconds"])
    except FileNotFoundError:
        return None
    per_trial = table.group_by("trial_id").aggregate([("train_seconds", "max"), ("eval_seconds", "sum")]).to_pylist()
    seconds = [(r["train_seconds_max"] or 0.0) + (r["eval_seconds_sum"] or 0.0) for r in per_trial]
    seconds = [x for x in seconds if x > 0]
    return sum(seconds) / len(seconds) if seconds else None


def closing_states(plan: SweepPlan, sweep_dir: SweepDir | Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Every trial's state after the run, as `fpr-sweep status` reads it (run/live.py
    ``trial_states``), so the summary and status agree; and how many more are pending unnamed."""
    from orchestrator.run.live import trial_states

    if plan.spec.search is None:
        planned = {c.cell_id: {"task": c.task, "variant": c.variant, "seed": c.seed} for c in plan.cells()}
        return trial_states(sweep_dir, planned)
    return trial_states(sweep_dir, {}, plan.trial_count)


def closing_counts(plan: SweepPlan, sweep_dir: SweepDir | Path) -> tuple[dict[str, int], int]:
    """(trials per final status, trials not finished) of ``closing_states``."""
    return count_states(*closing_states(plan, sweep_dir))


def count_states(states: dict[str, dict[str, Any]], unplanned: int) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    unfinished = unplanned + sum(counts.pop(s, 0) for s in ("pending", "running", "retrying"))
    return counts, unfinished


def _run_studies(plan: SweepPlan, studies: Iterator[Study], storage: str, meta: SweepMeta, opts: RunOptions,
                 skip: frozenset[str], hub: DriverHub, console: Console) -> int:
    """Fit each study in turn (until a stop is requested); returns how many trials are unfinished."""
    spec = plan.spec
    unfinished = 0
    for study in studies:
        if hub.stops.reason is not None:
            unfinished += _unfinished_in(plan, study, hub)
            continue
        path = f"{storage.rstrip('/')}/{study.name}"
        try:
            tuner, restored = _tuner(plan, study, storage, meta, opts.max_concurrent or spec.max_concurrent,
                                     skip, console)
            if restored:
                console.print(f"resuming Tune experiment {study.name}", highlight=False)
            with trust.Signer(Path(path)) if "://" not in path else nullcontext():
                tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's own handler
            hub.stops.reason = hub.stops.reason or "interrupted"
        except Exception as e:  # Tune writing its own state on a full disk, or reading back what it cut short
            if not (is_disk_full(e) or hub.disk_full):  # e.g. EOFError from a 0-byte pickled trial error
                raise
            hub.stop_for_disk(e)
        try:
            unfinished += reconcile(hub, path)
        except Exception:  # no readable state (stopped before Tune saved any): count the study's trials
            unfinished += _unfinished_in(plan, study, hub)
    return unfinished


def _unfinished_in(plan: SweepPlan, study: Study, hub: DriverHub) -> int:
    """Trials of a study not final: the grid's unfinished cells, or a search study's samples."""
    if study.cell is not None:
        return study.samples
    return sum(1 for c in plan.cells() if not hub.is_final(resolve(c)))


def _finish(outcome: SweepOutcome, hub: DriverHub, tracker: SweepTracker, stops: StopRequests, storage: str,
            console: Console, plan: SweepPlan) -> SweepOutcome:
    """Collect the table, count, close MLflow (KILLED when stopped), say why a run stopped. A
    driver that lost its lock writes nothing more: no table, no summary, no run ends."""
    try:
        if hub.lock_lost is None:
            hub.fence()
            outcome.results_path = parquet.collect(hub.sweep_dir)
    except DiskFull as e:
        hub.disk_full = hub.disk_full or e
    except LockLost as e:
        hub.lock_lost = str(e)
    if hub.lock_lost is not None:
        tracker.abandon()
        outcome.stopped = hub.lock_lost
        return outcome
    states, unplanned = closing_states(plan, hub.sweep_dir)
    outcome.counts, outcome.unfinished = count_states(states, unplanned)
    outcome.failures = [{"trial_id": t, **s} for t, s in states.items() if s["status"] == "failed"]
    hub.guarded("keeping missed models", hub.recover_models, storage,
                sorted(t for t, s in states.items() if s["status"] == "ok"))
    outcome.models = hub.sweep_dir.kept_models()
    hub.guarded("MLflow reconcile", reconcile_tracking, tracker, hub)
    hub.guarded("sweep summary", log_sweep_outcome, tracker, hub.sweep_dir)
    outcome.stopped = str(hub.disk_full) if hub.disk_full else stops.reason
    ended = "KILLED" if outcome.unfinished or outcome.stopped else (
        "FAILED" if outcome.counts.get("failed") else "FINISHED")
    try:
        outcome.tracking_problem = tracker.end_sweep(ended, drain_s=DISK_FULL_DRAIN_S if hub.disk_full else None)
    except LockLost as e:  # taken over while the summary was written
        tracker.abandon()
        outcome.stopped = str(e)
        return outcome
    for w in hub.warnings + tracker.warnings:
        console.print(f"[yellow]{escape(w)}[/]", highlight=False)  # tracebacks hold [brackets]
    if not outcome.unfinished and not outcome.stopped:
        _remove_set_aside(storage)
    return outcome


def _remove_set_aside(storage: str) -> None:
    """Once a run completed, the state folders set aside by earlier runs are of no further use."""
    if "://" in storage or not Path(storage).is_dir():
        return
    for aside in Path(storage).glob(f"*{ASIDE_MARK}*"):
        shutil.rmtree(aside, ignore_errors=True)
