"""The Ray Tune trainable: a plain function of the Tune config that runs one fpr_core experiment.

The config carries ``cell`` (a grid cell x task x seed, see expand.Cell), ``meta`` (sweep name,
spec hash, git commit) and, in search sweeps, ``search`` (the sampled values). Every reported name
comes from sweep/metrics.py.

Reports, all through Tune's ``report`` (run/tune_api.py; the trial may run on another node than the driver):
  - every ``train.log_every`` steps: ``step`` and ``train/<metric>`` (loss, accuracy, iterations);
  - every ``train.checkpoint_every`` steps (at most every MIN_CHECKPOINT_INTERVAL_S): the training
    state as a Tune checkpoint, so a retried or resumed trial continues where it stopped;
  - once at the end: the trial's result rows (``fpr/rows``, JSON), residual curves, and per-split
    metrics (``acc/<split>``, for Optuna), with a final checkpoint holding the rows, so a restored
    trial that had already finished re-reports its rows instead of training again.
A diverged trial ends normally with ``diverged`` rows; an exception propagates so Tune retries it.
An attempt still running after the spec's ``max_trial_minutes`` (config key TIME_LIMIT_KEY) ends
normally with ``timed_out`` rows: training checks the limit every step, and a ``CutOff`` ends
anything else past it (an evaluation or a data generation that hangs).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from orchestrator.run import members, tune_api
from orchestrator.run.members import MEMBER_RESULTS_KEY, MEMBERS_KEY
from orchestrator.store.provenance import hostname, package_versions
from orchestrator.store.rows import SweepMeta, experiment_rows, placeholder_rows, residual_curves
from orchestrator.sweep.expand import trial_of_config
from orchestrator.sweep.metrics import (CURVES_KEY, DATASETS_KEY, FINAL_LOSS, FINAL_SPLIT_COLUMNS, META_KEY, ROWS_KEY,
                                        STATUS_KEY, STEP, split_metric, train_report)

MIN_CHECKPOINT_INTERVAL_S = 30.0
"""Checkpoints closer together than this are skipped, and so is any in a trial's first interval.
Tune saves its experiment state (which names each trial's latest checkpoint) at most every ~10 s
and keeps only the newest CHECKPOINTS_KEPT checkpoints: spacing them wider than the state's period
means the checkpoint a killed driver's state points at still exists when the sweep resumes. Not
checkpointing a trial's first interval spares short trials a state save, its copy to storage and
a blocking round trip to the driver, at the price of redoing at most one interval on a retry."""
CHECKPOINTS_KEPT = 2
STATE_FILE = "train_state.pt"
ROWS_FILE = "rows.json"
MODEL_FILE = "model.pt"
"""The trial's saved model (fpr_core.saved_model) inside its final checkpoint."""
TIME_LIMIT_KEY = "max_trial_s"
"""Config key of the spec's max_trial_minutes, in seconds (absent or None: no limit)."""
TIMED_OUT = "timed_out"


class TrialTimedOut(BaseException):
    """Raised in the trial's thread once it has run past its time limit. A BaseException, like
    KeyboardInterrupt: a broad ``except Exception`` in a task's or the evaluator's code must not
    swallow it."""


class Deadline:
    """``should_stop`` for fpr_core's trainer (checked every step) and a check on every log and
    checkpoint offer: raises TrialTimedOut once ``limit_s`` has passed since this attempt started."""

    def __init__(self, limit_s: Optional[float], clock=time.monotonic) -> None:
        self.limit_s, self.clock = limit_s, clock
        self.started = clock()
        self.step = 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def __call__(self) -> bool:
        if self.limit_s is not None and self.elapsed() > self.limit_s:
            raise TrialTimedOut(self.message(f"at training step {self.step}"))
        return False

    def message(self, where: str) -> str:
        return (f"ran longer than max_trial_minutes ({(self.limit_s or 0) / 60:g} min): ended after "
                f"{self.elapsed():.1f} s, {where}")


CUT_OFF_GRACE_S = 2.0
"""A CutOff fires this long after the limit, so a trial still training ends at its own per-step
check first (its message names the step)."""


class CutOff:
    """``with CutOff(deadline):`` ends whatever the block's thread is doing once the deadline has
    passed (by CUT_OFF_GRACE_S): an evaluation or a data generation that hangs checks no deadline.
    A timer raises TrialTimedOut in that thread through CPython's PyThreadState_SetAsyncExc, the
    one way to interrupt another Python thread (Ray runs a function trainable in a thread, where
    signals cannot reach). It lands at the thread's next Python instruction: a call stuck inside C
    code is ended when it returns, not before."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._inside = False
        self._timer: Optional[threading.Timer] = None

    def _raise_in(self, exc: Optional[type]) -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), ctypes.py_object(exc) if exc else None)

    def _fire(self) -> None:
        with self._lock:
            if self._inside:
                self.fired = True
                self._raise_in(TrialTimedOut)

    def __enter__(self) -> "CutOff":
        if self.deadline.limit_s is not None:
            self._thread, self._inside = threading.get_ident(), True
            wait = max(0.0, self.deadline.limit_s - self.deadline.elapsed()) + CUT_OFF_GRACE_S
            self._timer = threading.Timer(wait, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._inside = False
            if self._timer is not None:
                self._timer.cancel()
            if self.fired:  # raised already, or still pending: never let it land after the block
                self._raise_in(None)

def worker_info() -> dict[str, str]:
    from orchestrator.run.ray_session import node_id

    return {"hostname": hostname(), "node_id": node_id(), "versions": package_versions()}


def final_result(rows: list[dict[str, Any]], curves: dict[str, list[float]]) -> dict[str, Any]:
    """The trial's last report: rows, curves, status, and flat per-split metrics for the searcher."""
    out: dict[str, Any] = {ROWS_KEY: json.dumps(rows), CURVES_KEY: json.dumps(curves),
                           STATUS_KEY: rows[0]["status"], STEP: rows[0].get("train_steps") or 0}
    for row in rows:  # the searcher reads the trial's own halting; other protocols' rows are extra
        if row["status"] == "ok" and (row.get("halting") or "trained") == "trained":
            out.update({split_metric(column, row["split"]): row[column] for column in FINAL_SPLIT_COLUMNS})
    if rows[0].get("final_loss") is not None:
        out[FINAL_LOSS] = rows[0]["final_loss"]
    return out


def _report_final(result: dict[str, Any], save_model=None) -> None:
    """The final report with a checkpoint holding the rows (and the saved model, written by
    ``save_model(path)`` when given), so a restored finished trial re-reports instead of training."""
    with tempfile.TemporaryDirectory() as tmp:
        kept = {k: result[k] for k in (ROWS_KEY, CURVES_KEY, DATASETS_KEY) if k in result}
        Path(tmp, ROWS_FILE).write_text(json.dumps(kept))
        if save_model is not None:
            save_model(Path(tmp, MODEL_FILE))
        tune_api.report(result, checkpoint=tune_api.Checkpoint.from_directory(tmp))


def _datasets(result: Any, task_name: str, task_params: dict[str, Any]) -> str:
    from fpr_core.tasks import get_task

    version = str(get_task(task_name, **task_params).version)
    return json.dumps([dict(dataclasses.asdict(d), generator_version=version) for d in result.datasets])


class CheckpointGate:
    """True when a checkpoint the training loop offers should be saved: not before
    ``interval_s`` has passed since the trial (re)started, then at most once per ``interval_s``."""

    def __init__(self, interval_s: float = MIN_CHECKPOINT_INTERVAL_S, clock=time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.last = clock()

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def fpr_trainable(config: dict[str, Any]) -> None:
    """Train and evaluate one trial, or a group of seeds (``seeds_per_trial``; see module doc)."""
    if MEMBERS_KEY in config:
        _group_trainable(config)
        return
    from fpr_core.config import ExperimentConfig
    from fpr_core.experiment import run_experiment
    from fpr_core.train import load_checkpoint, save_checkpoint

    trial = trial_of_config(config)
    meta = SweepMeta(**config[META_KEY])
    resume_state = None
    checkpoint = tune_api.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            rows_file, state_file = Path(d, ROWS_FILE), Path(d, STATE_FILE)
            if rows_file.exists():  # finished before the driver went down: report again, don't retrain
                saved = json.loads(rows_file.read_text())
                rows = json.loads(saved[ROWS_KEY])
                again = final_result(rows, json.loads(saved[CURVES_KEY]))
                if DATASETS_KEY in saved:
                    again[DATASETS_KEY] = saved[DATASETS_KEY]
                tune_api.report(again)
                return
            if state_file.exists():
                resume_state = load_checkpoint(state_file)

    deadline = Deadline(config.get(TIME_LIMIT_KEY))

    def on_log(step: int, metrics: dict[str, float]) -> None:
        deadline.step = step
        deadline()
        tune_api.report({STEP: step, **train_report(metrics)})

    checkpoint_due = CheckpointGate()

    def on_checkpoint(step: int, state: dict[str, Any]) -> None:
        deadline.step = step
        deadline()
        if not checkpoint_due():
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp, STATE_FILE), state)
            tune_api.report({STEP: step}, checkpoint=tune_api.Checkpoint.from_directory(tmp))

    cfg = ExperimentConfig.from_dict(trial.experiment_config())
    try:
        with CutOff(deadline):
            result = run_experiment(cfg, on_log=on_log, on_checkpoint=on_checkpoint,
                                    resume_state=resume_state, should_stop=deadline, device="auto")
    except TrialTimedOut as e:  # ends normally (no retry: it would time out again) with timed_out rows
        why = str(e) or deadline.message(f"cut off after training step {deadline.step} (evaluating, or generating data)")
        rows = placeholder_rows(trial, meta, TIMED_OUT, why,
                                {"train_seconds": deadline.elapsed(), "train_steps": deadline.step, **worker_info()})
        _report_final(final_result(rows, {}))
        return
    rows = experiment_rows(trial, meta, result, worker_info())
    final = final_result(rows, residual_curves(result))
    final[DATASETS_KEY] = _datasets(result, trial.cell.task, trial.cell.task_params)
    save_model = None
    if meta.keep_models == "final" and result.train.status == "ok":
        from fpr_core.saved_model import save_experiment_model

        provenance = {"trial_id": trial.trial_id, "sweep": meta.sweep, "git_commit": meta.git_commit,
                      "train_steps": result.train.steps}
        save_model = functools.partial(save_experiment_model, result=result, config=cfg.to_dict(), meta=provenance)
    _report_final(final, save_model)


def _restored_group(trials) -> tuple[Optional[dict[str, Any]], Optional[list[dict[str, Any]]]]:
    """From a group's Tune checkpoint: (its final report, when it had finished) or (None, the
    members' training states, when every member has one), else (None, None)."""
    from fpr_core.train import load_checkpoint

    checkpoint = tune_api.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as d:
        rows_file = Path(d, ROWS_FILE)
        if rows_file.exists():
            kept = json.loads(rows_file.read_text())[MEMBER_RESULTS_KEY]
            finals = {}
            for trial_id, saved in kept.items():
                finals[trial_id] = final_result(json.loads(saved[ROWS_KEY]), json.loads(saved[CURVES_KEY]))
                if DATASETS_KEY in saved:
                    finals[trial_id][DATASETS_KEY] = saved[DATASETS_KEY]
            return members.group_final(finals), None
        files = [Path(d, members.STATE_FILE.format(trial_id=t.trial_id)) for t in trials]
        if all(f.exists() for f in files):
            return None, [load_checkpoint(f) for f in files]
    return None, None


def _group_trainable(config: dict[str, Any]) -> None:
    """K seeds of one configuration trained as one batched model (orchestrator/run/members.py):
    per-member rows, curves, datasets and models; the mean of the members for the searcher."""
    from fpr_core.config import ExperimentConfig
    from fpr_core.members import run_member_experiments
    from fpr_core.train import save_checkpoint

    trials = members.member_trials(config)
    meta = SweepMeta(**config[META_KEY])
    again, resume_states = _restored_group(trials)
    if again is not None:  # finished before the driver went down: report again, don't retrain
        tune_api.report(again)
        return
    deadline = Deadline(config.get(TIME_LIMIT_KEY))

    def on_log(step: int, per_member: list) -> None:
        deadline.step = step
        deadline()
        tune_api.report(members.training_report(step, trials, per_member))

    checkpoint_due = CheckpointGate()

    def on_checkpoint(step: int, states: list) -> None:
        deadline.step = step
        deadline()
        if not checkpoint_due() or any(s is None for s in states):  # a diverged member: no resumable group state
            return
        with tempfile.TemporaryDirectory() as tmp:
            for t, state in zip(trials, states):
                save_checkpoint(Path(tmp, members.STATE_FILE.format(trial_id=t.trial_id)), state)
            tune_api.report({STEP: step}, checkpoint=tune_api.Checkpoint.from_directory(tmp))

    cfgs = [ExperimentConfig.from_dict(t.experiment_config()) for t in trials]
    try:
        with CutOff(deadline):
            results = run_member_experiments(cfgs, on_log=on_log, on_checkpoint=on_checkpoint,
                                             resume_states=resume_states, should_stop=deadline, device="auto")
    except TrialTimedOut as e:
        why = str(e) or deadline.message(f"cut off after training step {deadline.step} (evaluating, or generating data)")
        extra = {"train_seconds": deadline.elapsed(), "train_steps": deadline.step, **worker_info()}
        finals = {t.trial_id: final_result(placeholder_rows(t, meta, TIMED_OUT, why, extra), {}) for t in trials}
        _report_group(finals, {})
        return
    worker = worker_info()
    finals, save_models = {}, {}
    for t, cfg, result in zip(trials, cfgs, results):
        finals[t.trial_id] = final_result(experiment_rows(t, meta, result, worker), residual_curves(result))
        finals[t.trial_id][DATASETS_KEY] = _datasets(result, t.cell.task, t.cell.task_params)
        if meta.keep_models == "final" and result.train.status == "ok":
            from fpr_core.saved_model import save_experiment_model

            provenance = {"trial_id": t.trial_id, "sweep": meta.sweep, "git_commit": meta.git_commit,
                          "train_steps": result.train.steps}
            save_models[t.trial_id] = functools.partial(save_experiment_model, result=result, config=cfg.to_dict(),
                                                        meta=provenance)
    _report_group(finals, save_models)


def _report_group(finals: dict[str, dict[str, Any]], save_models: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        members.final_checkpoint_dir(tmp, finals, save_models, ROWS_FILE, MODEL_FILE)
        tune_api.report(members.group_final(finals), checkpoint=tune_api.Checkpoint.from_directory(tmp))
