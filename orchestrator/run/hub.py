"""What the driver does when trials start, report and end: MLflow runs, the trial's rows file,
the progress display. Tune calls ``ForwardingCallback``; it forwards to the active ``DriverHub``.

A trial is done when its rows file (``trials/<trial_id>.parquet``) holds a final status; every
hook checks that first, so a trial restored by Tune after it had finished only re-reports.
"""
from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from rich.console import Console
from rich.markup import escape

from orchestrator.console import SweepProgress
from orchestrator.store import parquet
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.store.run_info import dataset_records, trial_description
from orchestrator.store.schema import FINAL_STATUSES
from orchestrator.store.space import DiskFull, failed_path, is_disk_full
from orchestrator.run import tune_api
from orchestrator.run.members import member_views, view_checkpoint, view_result
from orchestrator.run.signals import StopRequests
from orchestrator.run.trainable import MODEL_FILE
from orchestrator.sweep.expand import Trial, trial_of_config
from orchestrator.run.live import LiveFile
from orchestrator.sweep.errors import LockLost
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.metrics import (CURVES_KEY, DATASETS_KEY, FINAL_SPLIT_COLUMNS, PROGRESS_METRICS, ROWS_KEY,
                                        STEP, is_train_metric, split_metric, train_metric)

if TYPE_CHECKING:  # mlflow loads in the thread that opens the store, not at import
    from orchestrator.store.tracking import SweepTracker


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
    for key in PROGRESS_METRICS:
        if isinstance(result.get(key), (int, float)):
            return f"{key}={result[key]:.4g}"
    return ""


def results_from(result: dict[str, Any]) -> tuple[list[dict], dict]:
    """The rows and residual curves a trial's final report carries."""
    return json.loads(result[ROWS_KEY]), json.loads(result.get(CURVES_KEY) or "{}")


class DriverHub:
    """Everything the driver does when trials start, report and end: MLflow, Parquet, progress."""

    def __init__(self, sweep_dir: SweepDir, meta: SweepMeta, tracker: SweepTracker,
                 progress: SweepProgress, console: Console, done_before: frozenset[str] = frozenset(),
                 stops: Optional[StopRequests] = None, fence: Optional[Callable[[], None]] = None) -> None:
        """``fence``: raises LockLost once another driver took the sweep over (run/lock.py);
        checked before every hook, so a fenced-off driver writes no rows, models or spool lines."""
        self.fence = fence or (lambda: None)
        self.lock_lost: Optional[str] = None
        self.sweep_dir = sweep_dir
        self.meta = meta
        self.tracker = tracker
        self.progress = progress
        self.console = console
        self.done_before = done_before
        """Trials final before this driver started: counted in the progress bar already."""
        self.stops = stops or StopRequests()
        self.disk_full: Optional[DiskFull] = None
        self.live = LiveFile(sweep_dir)
        self.warnings: list[str] = []
        self._trials: dict[str, Trial] = {}
        self._compacted = parquet.compacted_ids(sweep_dir)
        self._to_compact: list[str] = []

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

    def _final_status(self, t: Trial) -> str:
        """The status of a final trial's kept rows (file or fragment)."""
        table = parquet.read_trial(self.sweep_dir, t.trial_id)
        return table.column("status")[0].as_py() if table is not None else "ok"

    def is_final(self, t: Trial) -> bool:
        if t.trial_id in self._compacted:  # only final trials are compacted
            return True
        if not self.sweep_dir.trial_file(t.trial_id).exists():
            return False
        table = parquet.read_trial(self.sweep_dir, t.trial_id)
        return table is not None and table.column("status")[0].as_py() in FINAL_STATUSES

    def started(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        if not self.is_final(t):  # a finished trial restored as running only re-reports its rows
            self.tracker.describe(self._run(t), trial_description(t))
        self.live.set(t.trial_id, "running", *self._label(t)[1:])
        self.progress.started(*self._label(t))

    def result(self, tune_trial: Any, result: dict[str, Any]) -> None:
        t = self.trial(tune_trial)
        if ROWS_KEY in result:
            self.finish(t, results_from(result), result.get(STEP, 0), datasets=result.get(DATASETS_KEY))
            return
        metrics = {k: v for k, v in result.items() if is_train_metric(k)}
        if metrics:
            self.tracker.log_metrics(self._run(t), metrics, int(result.get(STEP, 0)))
        self.progress.result(*self._label(t), result.get(STEP), _latest_metric(result))

    def recovering(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        self.live.set(t.trial_id, "retrying", *self._label(t)[1:])
        self.progress.retrying(*self._label(t))

    def completed(self, tune_trial: Any) -> None:
        t = self.trial(tune_trial)
        last = tune_trial.last_result or {}
        if ROWS_KEY in last:
            self.finish(t, results_from(last), last.get(STEP, 0))
        elif not self.is_final(t):  # stopped early by the scheduler (ASHA)
            extra = {"train_steps": last.get(STEP), "final_loss": last.get(train_metric("loss"))}
            self.finish(t, (placeholder_rows(t, self.meta, "stopped", "stopped early by the scheduler",
                                             extra), {}), last.get(STEP, 0))

    def errored(self, tune_trial: Any) -> None:
        """A failed trial gets ``failed`` placeholder rows, unless it already holds final rows: a
        retry of a finished trial (Tune restored it as running after a driver died between its
        rows file and Tune's next state save) that fails never replaces its ok rows."""
        t = self.trial(tune_trial)
        error = _error_text(tune_trial)
        if self.is_final(t):
            self.warnings.append(f"trial {t.trial_id}: a retry after it had finished failed ({error}); its "
                                 "finished rows are kept")
        rows = placeholder_rows(t, self.meta, "failed", error)
        self.finish(t, (rows, {}), (tune_trial.last_result or {}).get(STEP, 0))

    def finish(self, t: Trial, rows_curves: tuple[list[dict], dict], step: Any, force: bool = False,
               datasets: Optional[str] = None) -> None:
        """The rows file (its existence marks the trial done), then the MLflow final metrics and
        artifacts (queued: never waits on the tracking server). ``datasets``: the splits the trial
        generated (JSON, the final report's DATASETS_KEY)."""
        rows, curves = rows_curves
        self.live.drop(t.trial_id)
        if self.is_final(t) and not force:  # finished rows are final: the run ends with their status
            kept = self._final_status(t)
            if self.tracker.is_open(t.trial_id):
                self.tracker.end_trial(t.trial_id, kept)
            if t.trial_id not in self.done_before:  # counted once: no "[12/8]" after a resume
                self.progress.finished(*self._label(t), kept)
            return
        parquet.write_trial_rows(self.sweep_dir, t.trial_id, rows)  # the table first, the tracker second
        self._compact_later(t.trial_id, rows[0]["status"])
        run = self._run(t)
        self.tracker.log_final(run, rows, curves, t.experiment_config(), int(step or 0))
        if datasets:
            c = t.cell
            self.tracker.log_datasets(run, dataset_records(c.task, c.task_params, c.seed, json.loads(datasets)))
        self.tracker.end_trial(t.trial_id, rows[0]["status"])
        self.progress.finished(*self._label(t), rows[0]["status"], _final_metric(rows))

    def keep_model(self, tune_trial: Any, checkpoint: Any) -> None:
        """Copy the saved model of a trial's final checkpoint to models/<trial_id>.pt and log it to
        the trial's run (once: a model already kept is left alone)."""
        t = self.trial(tune_trial)
        dest = self.sweep_dir.model_file(t.trial_id)
        if checkpoint is None or dest.exists():
            return
        try:  # read through the checkpoint's own filesystem: local, NFS or s3:// storage alike
            stream = checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{MODEL_FILE}")
        except FileNotFoundError:  # a training-state checkpoint, not the final one
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with stream, open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out)
        os.replace(tmp, dest)
        c = t.cell
        # The trial id is the run's handle: the sender finds the run by tag and never reopens an
        # ended one (no "run" operation), and nothing here waits on the tracking server.
        self.tracker.log_weights(t.trial_id, dest, int((tune_trial.last_result or {}).get(STEP, 0)),
                                 f"{c.task}-{t.trial_id}", t.experiment_config())

    def recover_models(self, storage: str, ok_trials: list[str]) -> None:
        """Keep the model of every ok trial that has none, from its final Tune checkpoint: a driver
        killed between a trial's rows file and its checkpoint's callback, then resumed without
        Tune's saved state (set aside: untrusted, cut short, or the folder moved), never got the
        callback again. Looked for under the local Tune storage, set-aside folders included; the
        MLflow reconcile after the run then logs it."""
        if self.meta.keep_models == "none" or "://" in storage:
            return
        for trial_id in ok_trials:
            dest = self.sweep_dir.model_file(trial_id)
            if dest.exists():
                continue
            found = sorted(Path(storage).glob(f"*/*-{trial_id}/checkpoint_*/{MODEL_FILE}"),
                           key=lambda p: p.stat().st_mtime)
            if not found:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(found[-1], tmp)
            os.replace(tmp, dest)
            self.warnings.append(f"trial {trial_id}: its model was kept from Tune's checkpoint {found[-1].parent} "
                                 "(the driver that finished it stopped before keeping it)")

    def _compact_later(self, trial_id: str, status: str) -> None:
        """Every COMPACT_EVERY final trials, move their files into one fragment (collect and status
        then read a few large files instead of one per trial)."""
        if status not in FINAL_STATUSES:
            return
        self._to_compact.append(trial_id)
        if len(self._to_compact) >= parquet.COMPACT_EVERY:
            parquet.compact(self.sweep_dir, self._to_compact)
            self._compacted.update(self._to_compact)
            self._to_compact = []

    def guarded(self, what: str, fn, *args) -> None:
        """Run a hook; a failure is reported, not raised (Tune would abort the whole sweep). Nothing
        runs once the driver lost its lock: the sweep stops as on Ctrl-C, writing nothing more."""
        if self.lock_lost is not None:
            return
        try:
            self.fence()
            fn(*args)
        except LockLost as e:
            self.lock_lost = str(e)
            self.stops.request("lock lost")
        except Exception as e:
            if isinstance(e, DiskFull) or is_disk_full(e):
                self.stop_for_disk(e)
                return
            msg = f"driver: {what} failed: {type(e).__name__}: {e}"
            self.warnings.append(msg + "\n" + traceback.format_exc())
            self.console.print(f"[yellow]{escape(msg)}[/]", highlight=False)  # the error may hold [brackets]


    def stop_for_disk(self, error: BaseException) -> None:
        """A full disk stops the sweep as Ctrl-C would, with one message (printed at the end)."""
        if self.disk_full is None:
            self.disk_full = error if isinstance(error, DiskFull) else DiskFull(failed_path(error, self.sweep_dir), 0)
            self.stops.request("disk full")


def _final_metric(rows: list[dict]) -> str:
    """The accuracy of the trial's last evaluated split under its own halting, for the progress display."""
    column = FINAL_SPLIT_COLUMNS[0]
    return next((f"{split_metric(column, r['split'])}={r[column]:.3f}" for r in reversed(rows)
                 if r.get(column) is not None and (r.get("halting") or "trained") == "trained"), "")


_ACTIVE: Optional[DriverHub] = None
"""The hub of the running sweep. The callback below is pickled into Tune's tuner.pkl and comes back
on restore, so it holds no state and forwards to whatever hub the current driver installed."""


def activate(hub: Optional[DriverHub]) -> None:
    """Install the hub the callbacks forward to (None when the run ends)."""
    global _ACTIVE
    _ACTIVE = hub


class ForwardingCallback(tune_api.Callback):
    """Driver-side Tune callback: forwards trial events to the active DriverHub, once per trial the
    Tune trial runs (a group of ``seeds_per_trial`` seeds is one Tune trial: run/members.py)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            for view in member_views(trial):
                _ACTIVE.guarded("trial start", _ACTIVE.started, view)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE is not None:
            for view in member_views(trial):
                _ACTIVE.guarded("trial result", _ACTIVE.result, view, view_result(view, result))

    def on_trial_recover(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            for view in member_views(trial):
                _ACTIVE.guarded("trial retry", _ACTIVE.recovering, view)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            for view in member_views(trial):
                _ACTIVE.guarded("trial completion", _ACTIVE.completed, view)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            for view in member_views(trial):
                _ACTIVE.guarded("trial error", _ACTIVE.errored, view)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if _ACTIVE is not None and _ACTIVE.meta.keep_models != "none":
            for view in member_views(trial):
                _ACTIVE.guarded("keeping the model", _ACTIVE.keep_model, view, view_checkpoint(view, checkpoint))
