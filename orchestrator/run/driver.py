"""Runs a sweep on Ray Tune (with trainable.py, the only modules importing ray).

``run_sweep`` starts (or joins) Ray, runs one Tuner over the grid's trials (or one Tuner with an
Optuna study per grid cell when the spec has a ``search`` section; see expand.py), and on the
driver turns every finished trial into MLflow runs and a Parquet rows file. Re-running the same
command resumes: ``Tuner.can_restore`` -> ``Tuner.restore(..., resume_errored=True)``; trials whose
rows file already holds a final status are never trained again.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import ray
from ray import tune
from rich.console import Console

from orchestrator.store import parquet as results
from orchestrator.sweep.expand import Cell, Trial, expand, resolve, trial_count
from orchestrator.console import SweepProgress
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.sweep.spec import SweepSpec
from orchestrator.run.trainable import CHECKPOINTS_KEPT, CURVES_KEY, ROWS_KEY, fpr_trainable
from orchestrator.store.tracking import SweepTracker

FINAL_STATUSES = ("ok", "diverged", "stopped")
"""A trial whose rows file holds one of these is done; 'failed' trials run again on resume."""
TUNE_DIR = "tune"


class SweepError(RuntimeError):
    """The sweep cannot start (bad resources, unreachable services); the message is for the user."""


@dataclass
class RunOptions:
    """Command-line knobs of `fpr-sweep run` (each overrides the spec's value when given)."""

    address: Optional[str] = None
    max_concurrent: Optional[int] = None
    tracking_uri: Optional[str] = None
    results_dir: Optional[str] = None
    storage: Optional[str] = None
    smoke: bool = False


@dataclass
class SweepOutcome:
    """What a run left behind."""

    sweep_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    results_path: Optional[Path] = None
    ray_start_seconds: Optional[float] = None

    @property
    def exit_code(self) -> int:
        """0 when every trial finished without failing, else 1."""
        return 1 if self.counts.get("failed", 0) or self.unfinished else 0


def sweep_name(spec: SweepSpec, smoke: bool) -> str:
    """Smoke runs get their own directory so tiny-budget trials never mix with real ones."""
    return f"{spec.name}-smoke" if smoke else spec.name


def sweep_dir_for(spec: SweepSpec, opts: RunOptions) -> Path:
    """results_dir/<sweep>, refused if it resolves outside results_dir (e.g. a symlink elsewhere)."""
    root = Path(opts.results_dir or spec.results_dir).resolve()
    sweep_dir = (root / sweep_name(spec, opts.smoke)).resolve()
    if sweep_dir.parent != root:
        raise SweepError(f"{root / sweep_name(spec, opts.smoke)} resolves to {sweep_dir}, outside the results "
                         f"dir {root}; remove the link or pick another name / --results-dir.")
    return sweep_dir


def storage_for(sweep_dir: Path, storage: Optional[str]) -> str:
    """Tune's storage path: <sweep>/tune by default; under shared storage (--storage-path
    s3://bucket/prefix, an NFS dir) one folder per sweep, so two sweeps never share experiments.
    A URI is passed to Tune as is: saving and restoring both resolve its filesystem from it."""
    if storage is None:
        return str(sweep_dir / TUNE_DIR)
    base = storage.rstrip("/") if "://" in storage else str(Path(storage).resolve())
    return f"{base}/{sweep_dir.name}"


# ---------------------------------------------------------------- Ray

def quiet_tune() -> None:
    """Our own progress table replaces Tune's reporter; metric names are checked in spec.py
    (intermediate reports carry training metrics, only the final one the per-split metrics)."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def ensure_ray(address: Optional[str], console: Console) -> Optional[float]:
    """Join a running Ray session, the cluster at ``address`` (or $RAY_ADDRESS), or start a local
    one with every core and no dashboard (no HTTP server). Returns the start-up time in seconds
    when this call started Ray."""
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    started = time.perf_counter()
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            raise SweepError(f"--address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]}); "
                             "check the address, and for a token-authenticated cluster set RAY_AUTH_MODE=token "
                             "with its token in ~/.ray/auth_token or $RAY_AUTH_TOKEN.") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), **common)
    seconds = time.perf_counter() - started
    console.print(f"Ray {'joined ' + address if address else 'started locally'} in {seconds:.1f} s "
                  f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)",
                  highlight=False)
    return seconds


def check_resources(spec: SweepSpec) -> None:
    """A request the cluster cannot meet would hang forever in Tune: fail fast instead."""
    have = ray.cluster_resources()
    need = spec.resources
    if need.gpu > 0 and have.get("GPU", 0) < need.gpu:
        raise SweepError(f"resources.gpu: each trial asks for {need.gpu:g} GPU but the Ray cluster has "
                         f"{have.get('GPU', 0):g}; set resources.gpu: 0 to train on CPU, or pass --address "
                         "of a cluster with GPU nodes.")
    if have.get("CPU", 0) < need.cpu:
        raise SweepError(f"resources.cpu: each trial asks for {need.cpu:g} CPUs but the Ray cluster has "
                         f"{have.get('CPU', 0):g}; lower resources.cpu.")


# ---------------------------------------------------------------- driver-side bookkeeping

def trial_of_config(config: dict[str, Any]) -> Trial:
    return resolve(Cell.from_payload(config["cell"]), config.get("search"))


def _error_text(tune_trial: Any) -> str:
    """The last line of a failed trial's error (the exception's type and message)."""
    text = ""
    local = tune_trial.error_file  # the driver's staging copy, written before callbacks run
    if local and Path(local).exists():
        text = Path(local).read_text()
    if not text.strip():
        try:
            text = str(tune_trial.get_error() or "")  # from the storage path (e.g. after a restore)
        except Exception:  # unreadable error file: still mark the trial failed
            text = ""
    text = text or "trial failed (no error recorded)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _latest_metric(result: dict[str, Any]) -> str:
    for key in ("acc/id", "train/loss"):
        if isinstance(result.get(key), (int, float)):
            return f"{key}={result[key]:.4g}"
    return ""


class DriverHub:
    """Everything the driver does when trials start, report and end: MLflow, Parquet, progress."""

    def __init__(self, sweep_dir: Path, meta: SweepMeta, tracker: SweepTracker,
                 progress: SweepProgress, console: Console) -> None:
        self.sweep_dir = sweep_dir
        self.meta = meta
        self.tracker = tracker
        self.progress = progress
        self.console = console
        self.warnings: list[str] = []
        self._trials: dict[str, Trial] = {}

    def trial(self, tune_trial: Any) -> Trial:
        key = tune_trial.trial_id
        if key not in self._trials:
            self._trials[key] = trial_of_config(tune_trial.config)
        return self._trials[key]

    def _label(self, t: Trial) -> tuple[str, str, str, int]:
        return t.trial_id, t.cell.task, t.cell.variant, t.cell.seed

    def _run(self, t: Trial) -> str:
        c = t.cell
        tags = {"task": c.task, "variant": c.variant, "seed": str(c.seed)}
        params = {**t.experiment_config(), "variant": c.variant}
        return self.tracker.trial_run(t.trial_id, f"{c.task}/{c.variant}/s{c.seed}/{t.trial_id}", tags, params)

    def is_final(self, t: Trial) -> bool:
        table = results.read_trial(self.sweep_dir, t.trial_id)
        return table is not None and table.column("status")[0].as_py() in FINAL_STATUSES

    def started(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        if not self.is_final(t):  # a finished trial restored as running only re-reports its rows
            self._run(t)
        self.progress.started(*self._label(t))

    def result(self, tune_trial: Any, result: dict[str, Any]) -> None:
        t = self.trial(tune_trial)
        if ROWS_KEY in result:
            self.finish(t, results_from(result), result.get("step", 0))
            return
        metrics = {k: v for k, v in result.items() if k.startswith("train/")}
        if metrics:
            self.tracker.log_metrics(self._run(t), metrics, int(result.get("step", 0)))
        self.progress.result(*self._label(t), result.get("step"), _latest_metric(result))

    def recovering(self, tune_trial: Any) -> None:
        self.progress.retrying(*self._label(self.trial(tune_trial)))

    def completed(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        last = tune_trial.last_result or {}
        if ROWS_KEY in last:
            self.finish(t, results_from(last), last.get("step", 0))
        elif not self.is_final(t):  # stopped early by the scheduler (ASHA)
            extra = {"train_steps": last.get("step"), "final_loss": last.get("train/loss")}
            self.finish(t, (placeholder_rows(t, self.meta, "stopped", "stopped early by the scheduler",
                                             extra), {}), last.get("step", 0))

    def errored(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        rows = placeholder_rows(t, self.meta, "failed", _error_text(tune_trial))
        self.finish(t, (rows, {}), (tune_trial.last_result or {}).get("step", 0), force=True)

    def finish(self, t: Trial, rows_curves: tuple[list[dict], dict], step: Any, force: bool = False) -> None:
        """MLflow final metrics + artifacts, then the rows file (its existence marks the trial done)."""
        rows, curves = rows_curves
        if self.is_final(t) and not force:
            if self.tracker.is_open(t.trial_id):
                self.tracker.end_trial(t.trial_id, rows[0]["status"])
            self.progress.finished(*self._label(t), rows[0]["status"])
            return
        run_id = self._run(t)
        self.tracker.log_final(run_id, rows, curves, t.experiment_config(), int(step or 0))
        results.write_trial_rows(self.sweep_dir, t.trial_id, rows)
        self.tracker.end_trial(t.trial_id, rows[0]["status"])
        metric = next((f"acc/{r['split']}={r['exact_acc']:.3f}" for r in reversed(rows)
                       if r.get("exact_acc") is not None), "")
        self.progress.finished(*self._label(t), rows[0]["status"], metric)

    def guarded(self, what: str, fn, *args) -> None:
        """Run a hook; a failure is reported, not raised (Tune would abort the whole sweep)."""
        try:
            fn(*args)
        except Exception as e:
            msg = f"driver: {what} failed: {type(e).__name__}: {e}"
            self.warnings.append(msg + "\n" + traceback.format_exc())
            self.console.print(f"[yellow]{msg}[/]", highlight=False)


def results_from(result: dict[str, Any]) -> tuple[list[dict], dict]:
    """The rows and residual curves a trial's final report carries."""
    return json.loads(result[ROWS_KEY]), json.loads(result.get(CURVES_KEY) or "{}")


_ACTIVE: Optional[DriverHub] = None
"""The hub of the running sweep. The callback below is pickled into Tune's tuner.pkl and comes back
on restore, so it holds no state and forwards to whatever hub the current driver installed."""


class ForwardingCallback(tune.Callback):
    """Driver-side Tune callback: forwards trial events to the active DriverHub."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.guarded("trial start", _ACTIVE.started, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE is not None:
            _ACTIVE.guarded("trial result", _ACTIVE.result, trial, result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.guarded("trial retry", _ACTIVE.recovering, trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.guarded("trial completion", _ACTIVE.completed, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.guarded("trial error", _ACTIVE.errored, trial)


# ---------------------------------------------------------------- Tuners

def _dirname(tune_trial: Any) -> str:
    t = trial_of_config(tune_trial.config)
    return f"{t.cell.task}-{t.trial_id}"


def _search_domain(dist: Any) -> Any:
    kind = dist.type
    if kind == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if kind == "uniform":
        return tune.uniform(dist.low, dist.high)
    if kind == "int":
        return (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
    return tune.choice(list(dist.values))


def _scheduler(spec: SweepSpec, cells: list[Cell]) -> Any:
    s = spec.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = s.max_t or max(int(c.sections["train"]["steps"]) for c in cells)
    # stop_last_trials=False: a trial reaching max_t has finished training and must still evaluate.
    return ASHAScheduler(time_attr="step", metric=s.metric, mode=s.mode, max_t=max_t,
                         grace_period=min(s.grace_period, max_t), reduction_factor=s.reduction_factor,
                         stop_last_trials=False)


def _optuna_search(metric: str, mode: str, seed: int) -> Any:
    """Tune's OptunaSearch, told only final results: our intermediate reports carry training
    metrics, the search metric (e.g. acc/ood_64) arrives once at the end. ASHA-stopped trials
    never report it and reach Optuna as PRUNED, so their early values do not bias TPE."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    class FinalResultOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalResultOptunaSearch(metric=metric, mode=mode, seed=seed)


@dataclass
class Study:
    """One Tuner: a Tune experiment name and what to run in it."""

    name: str
    cells: list[Cell]
    samples: int


def plan_studies(spec: SweepSpec, cells: list[Cell], done: dict[str, str]) -> list[Study]:
    """Grid sweeps: one Tuner over the cells not finished yet. Search sweeps: one Tuner per cell."""
    h = spec.spec_hash()
    if spec.search is None:
        todo = [c for c in cells if done.get(c.cell_id) not in FINAL_STATUSES]
        return [Study(f"grid-{h}", todo, 1)] if todo else []
    return [Study(f"search-{h}-{c.cell_id}", [c], spec.search.num_samples) for c in cells]


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


def _set_aside(path: str, console: Console) -> None:
    aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, aside)
    console.print(f"[yellow]Tune's saved state in {path} is unreadable (the driver was killed while "
                  f"writing it); moved it to {aside} and restarting the unfinished trials from scratch. "
                  "Finished trials keep their rows.[/]", highlight=False)


def _tuner(spec: SweepSpec, study: Study, storage: str, meta: SweepMeta, max_concurrent: Optional[int],
           console: Console):
    trainable = tune.with_resources(fpr_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = f"{storage.rstrip('/')}/{study.name}"
    if tune.Tuner.can_restore(path):
        if experiment_state_readable(path):
            return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True), True
        _set_aside(path, console)
    search_alg = None
    if spec.search is None:
        param_space = {"cell": tune.grid_search([c.payload() for c in study.cells]), "meta": meta.as_dict()}
    else:
        param_space = {"cell": study.cells[0].payload(), "meta": meta.as_dict(),
                       "search": {k: _search_domain(d) for k, d in spec.search.space.items()}}
        search_alg = _optuna_search(spec.search.metric, spec.search.mode, study.cells[0].seed)
    tune_config = tune.TuneConfig(num_samples=study.samples, search_alg=search_alg,
                                  scheduler=_scheduler(spec, study.cells),
                                  max_concurrent_trials=max_concurrent, reuse_actors=True,
                                  trial_dirname_creator=_dirname, trial_name_creator=_dirname)
    run_config = tune.RunConfig(
        name=study.name, storage_path=storage, verbose=0, callbacks=[ForwardingCallback()],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config), False


def reconcile(hub: DriverHub, exp_path: str) -> int:
    """Write rows the live callbacks missed (e.g. the driver died between a trial's end and its
    rows file); returns how many trials are still unfinished."""
    from ray.tune import ExperimentAnalysis

    unfinished = 0
    for tt in ExperimentAnalysis(exp_path).trials:
        if tt.status == "TERMINATED":
            hub.guarded("reconcile", hub.completed, tt)
        elif tt.status == "ERROR":
            t = hub.trial(tt)
            table = results.read_trial(hub.sweep_dir, t.trial_id)
            if table is None:
                hub.guarded("reconcile", hub.errored, tt)
        elif not hub.is_final(hub.trial(tt)):  # rows can arrive just before an interrupt
            unfinished += 1
    return unfinished


def tune_trial_states(sweep_dir: Path) -> dict[str, tuple[str, Trial]]:
    """trial_id -> (Tune status: PENDING/RUNNING/PAUSED/TERMINATED/ERROR, trial) from the experiment
    state files under the sweep's tune dir (for `fpr-sweep status`; reads files, starts nothing)."""
    from ray.tune import ExperimentAnalysis

    states: dict[str, tuple[str, Trial]] = {}
    tune_dir = Path(sweep_dir).resolve() / TUNE_DIR
    if not tune_dir.is_dir():
        return states
    for exp in sorted(tune_dir.iterdir()):
        if not experiment_state_readable(str(exp)):  # none yet, or set aside as unreadable
            continue
        for tt in ExperimentAnalysis(str(exp)).trials:
            t = trial_of_config(tt.config)
            states[t.trial_id] = (tt.status, t)
    return states


# ---------------------------------------------------------------- the run

def run_sweep(spec: SweepSpec, opts: RunOptions, tracker_factory, console: Console) -> SweepOutcome:
    """Run (or resume) the sweep; ``tracker_factory(sweep_dir, meta)`` opens its SweepTracker."""
    global _ACTIVE
    from orchestrator.store.provenance import git_commit

    quiet_tune()
    name = sweep_name(spec, opts.smoke)
    sweep_dir = sweep_dir_for(spec, opts)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    meta = SweepMeta(name, spec.spec_hash(), git_commit())
    cells = expand(spec, smoke=opts.smoke)
    done = results.finished_statuses(sweep_dir)
    studies = plan_studies(spec, cells, done)
    total = trial_count(spec, cells)
    already = sum(1 for c in cells if done.get(c.cell_id) in FINAL_STATUSES) if spec.search is None else 0
    outcome = SweepOutcome(sweep_dir)
    # Opening a new SQLite store runs MLflow's migrations (~10 s here): overlap it with Ray's start.
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(tracker_factory, sweep_dir, meta)
        if studies:
            outcome.ray_start_seconds = ensure_ray(opts.address, console)
        tracker = opening.result()
    if studies:
        check_resources(spec)
    storage = storage_for(sweep_dir, opts.storage)
    progress = SweepProgress(console, total, already, title=name)
    hub = DriverHub(sweep_dir, meta, tracker, progress, console)
    _ACTIVE = hub
    progress.start()
    try:
        for study in studies:
            tuner, restored = _tuner(spec, study, storage, meta, opts.max_concurrent or spec.max_concurrent,
                                     console)
            if restored:
                console.print(f"resuming Tune experiment {study.name}", highlight=False)
            tuner.fit()
            outcome.unfinished += reconcile(hub, f"{storage.rstrip('/')}/{study.name}")
    finally:
        progress.stop()
        _ACTIVE = None
    outcome.results_path = results.collect(sweep_dir)
    statuses = results.finished_statuses(sweep_dir)
    for status in statuses.values():
        outcome.counts[status] = outcome.counts.get(status, 0) + 1
    tracker.end_sweep("KILLED" if outcome.unfinished else ("FAILED" if outcome.counts.get("failed") else "FINISHED"))
    for w in hub.warnings:
        console.print(f"[yellow]{w}[/]", highlight=False)
    return outcome
