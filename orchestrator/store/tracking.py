"""MLflow tracking (the only module importing mlflow). Only the Ray driver writes here, so a
SQLite store never sees concurrent writers.

One experiment per sweep *identity* (the sweep id stored in the sweep folder, see
orchestrator/run/record.py), artifacts under that sweep's folder, one parent run for the sweep and
one nested child run per trial. Runs are found again by tag (``fpr.role = sweep`` for the parent,
``trial_id`` for a child), so a resumed sweep continues its runs instead of opening duplicates (Ray's
stock MLflowLoggerCallback opens a second run per trial after a restore).

The table first, the tracker second: every write after start-up goes through the spool and its
background sender (orchestrator/store/spool.py). The Tune loop only appends a line to a local file;
an outage delays the MLflow runs, never the Parquet rows, and nothing is lost: the spool is sent when
the server is back, or by the next run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.store.mlflow_model import link_run_to_models, save_pyfunc
from orchestrator.store.space import DiskFull, is_disk_full
from orchestrator.store.sqlite_store import relocate_artifacts, store_creation_lock
from orchestrator.store.ui_mode import EXPERIMENT_KIND_TAG, TRAINING_KIND, save_trials_view
from orchestrator.store.store_address import TrackingError
from orchestrator.store.spool import PARENT, Sender, Spool, _first_line, operation
from orchestrator.store.run_info import DatasetRecord
from orchestrator.sweep.layout import SweepDir, SweepPath
from orchestrator.sweep.metrics import (SIZE_SERIES, SPLIT_METRIC_NAMES, TRIAL_SUMMARY_COLUMNS, WEIGHTS_BYTES,
                                        budget_metric, split_metric, sweep_count_metric)

PARENT_TAG = "mlflow.parentRunId"
WEIGHTS_ARTIFACT_DIR = "weights"
"""Child-run artifact folder holding the trial's saved model."""
NOTE_TAG = "mlflow.note.content"
"""Run and experiment description, as the MLflow UI shows and edits it."""
RUN_COLOR_TAG = "mlflow.runColor"
"""A run's colour in the MLflow UI's charts and runs table: the UI reads it from this tag (and its
colour picker writes it there); without it the UI picks colours from the run id, often alike."""
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")
"""Variant hues in the spec's order (matplotlib's tab10, then darker ones); seeds shade them."""
SEED_SHADES = (0.0, 0.45, -0.35, 0.7, -0.6)
"""Per seed (in the spec's order): how far a variant's hue is mixed towards white (+) or black (-)."""
SINGLE_VALUE_STEP = 0
"""Step of a trial's single-valued metrics (per-split results, train_seconds, model size). The MLflow
UI charts a metric whose latest step is 0 as one bar per run, and one with a later step as a line,
where a value logged once is a lone dot (its auto-generated charts, mlflow 3.x)."""
BATCH = 100
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
"""Its SQL errors come with whole tracebacks; the sender retries or reports each failure itself."""


def run_colour(variant_index: int, seed_index: int) -> str:
    """'#rrggbb': the variant's hue, shaded by the seed (runs of one variant read as one family)."""
    base = PALETTE[variant_index % len(PALETTE)]
    mix = SEED_SHADES[seed_index % len(SEED_SHADES)]
    target = 255 if mix > 0 else 0
    channels = [int(base[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (target - c) * abs(mix)):02x}" for c in channels)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'model': {'recall': 'none'}} -> {'model.recall': 'none'}."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return out


def _ms() -> int:
    return int(time.time() * 1000)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


DRAIN_ENV = "FPR_TRACKING_DRAIN_S"
DRAIN_S = 60.0
"""How long the end of a run waits for unsent MLflow writes while the server is unreachable."""
SWEEP_ID_TAG = "fpr.sweep_id"


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the store is unreachable, overloaded or locked; not a refused value."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return status >= 500 or status == 429
    name = type(e).__name__
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or name in (
        "OperationalError", "ConnectionError", "Timeout", "ReadTimeout", "ChunkedEncodingError")


def by_protocol(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as MLflow keys them: a row of the trials' own halting ('trained', or none recorded) as
    it is (``acc/ood_22``); a row of another protocol under ``<split>/<protocol>`` (``acc/ood_22/long``,
    ``by_loop_budget/exact_acc/ood_22/long``) and out of the size series (one point per size, the trained one)."""
    return [r if (r.get("halting") or "trained") == "trained"
            else dict(r, split=f"{r['split']}/{r['halting']}", size=None) for r in rows]


class SweepTracker:
    """MLflow runs of one sweep: the parent run and one child run per trial.

    Public calls never wait on the tracking store after start-up: each becomes an operation in
    the sweep's spool. Run handles (what ``trial_run`` returns, ``PARENT`` for the sweep) name a
    run before MLflow has created it; ``run_id(handle)`` gives the MLflow id once sent."""

    def __init__(self, uri: str, sweep: str, sweep_dir: SweepPath, tags: dict[str, str],
                 sweep_id: Optional[str] = None, description: str = "", reopen: bool = True,
                 fence: Optional[Callable[[], None]] = None) -> None:
        """``sweep_id``: the sweep folder's id (sweep.json), which keys the experiment. ``reopen``:
        mark the parent run RUNNING (a run or resume); False attaches to a finished sweep without
        changing its state (``fpr-sweep eval``, ``report``). ``fence``: the sweep lock's check
        (raises LockLost once another driver holds the sweep), run before every spool write and
        every send."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the sender retries, not the client
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.uri = uri
        self.tags = dict(tags)
        self.sweep_id = sweep_id
        self.artifacts = SweepDir.of(sweep_dir).resolved().mlflow_artifacts
        self.relocated = relocate_artifacts(uri, sweep_dir)  # a copied or moved folder: its own artifacts
        with store_creation_lock(uri):  # the client's store creates (or migrates) the database
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment(sweep)
        self._describe_experiment(description)
        self.parent_id = self._parent_run(sweep, reopen)
        if description:
            self.client.set_tag(self.parent_id, NOTE_TAG, description)
        self._system_metrics: Any = None
        self.spool = Spool(sweep_dir)
        if fence is not None:
            self.spool.fence = fence
        self._open: set[str] = set()
        self._runs: dict[str, str] = {PARENT: self.parent_id}
        self._variant_index: dict[str, int] = {}
        self._seed_index: dict[str, int] = {}
        self.sender = Sender(self.spool, self.client, self._resolve, is_transient)

    # ---------------------------------------------------------------- start-up (synchronous)
    def _experiment(self, sweep: str) -> str:
        try:
            exp = self.client.get_experiment_by_name(sweep)
            if exp is not None and not self._is_ours(exp):
                name = f"{sweep}-{self.sweep_id[:8]}"
                exp = self.client.get_experiment_by_name(name)
            else:
                name = sweep
        except Exception as e:  # a broken store: report what and where, not a stack of SQL
            raise TrackingError(f"cannot open the MLflow store {self.uri}: {_first_line(e)}") from None
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if self.sweep_id and SWEEP_ID_TAG not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, SWEEP_ID_TAG, self.sweep_id)
            return exp.experiment_id
        tags = {"fpr.sweep": sweep, **({SWEEP_ID_TAG: self.sweep_id} if self.sweep_id else {})}
        if self.uri.startswith(("http://", "https://")):
            # The server stores artifacts under its --artifacts-destination and hands out relative
            # mlflow-artifacts:/ URIs: they still resolve once the store is synced elsewhere.
            return self.client.create_experiment(name, tags=tags)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(name, artifact_location=self.artifacts.as_uri(), tags=tags)

    def _describe_experiment(self, description: str) -> None:
        """Training experiment (the UI opens in model-training mode) with its trials view
        (orchestrator/store/ui_mode.py), described by the spec."""
        try:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            save_trials_view(self.client, self.experiment_id)
            if description:
                self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, description)
        except Exception as e:
            raise TrackingError(f"cannot write to the MLflow store {self.uri}: {_first_line(e)}") from None

    def _is_ours(self, exp: Any) -> bool:
        """Same sweep id, or (an experiment made before sweep ids) artifacts in our folder."""
        if self.sweep_id is None:
            return True
        theirs = exp.tags.get(SWEEP_ID_TAG)
        if theirs is not None:
            return theirs == self.sweep_id
        return exp.artifact_location.rstrip("/") == self.artifacts.as_uri().rstrip("/")

    def _find(self, filter_string: str) -> Optional[str]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def _parent_run(self, sweep: str, reopen: bool = True) -> str:
        try:
            run_id = self._find("tags.`fpr.role` = 'sweep'")
            if run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=sweep,
                                             tags={"fpr.role": "sweep", **self.tags})
                return run.info.run_id
            if reopen:
                self.client.update_run(run_id, status="RUNNING")
            for key, value in self.tags.items():
                self.client.set_tag(run_id, key, value)
        except Exception as e:
            raise TrackingError(f"cannot open the sweep's run in {self.uri}: {_first_line(e)}") from None
        return run_id

    # ---------------------------------------------------------------- sender side
    def _resolve(self, op: dict[str, Any]) -> str:
        """The run of an operation's trial: cached, found by its trial_id tag, or created."""
        trial = op["trial"]
        if trial in self._runs:
            return self._runs[trial]
        run_id = self._find(f"tags.trial_id = '{trial}'")
        if run_id is None:
            tags = {PARENT_TAG: self.parent_id, "trial_id": trial, **self.tags, **op.get("tags", {})}
            run_id = self.client.create_run(self.experiment_id, run_name=op.get("name") or trial,
                                            tags=tags).info.run_id
        elif op["op"] == "run":
            self.client.update_run(run_id, status="RUNNING")
        self._runs[trial] = run_id
        return run_id

    # ---------------------------------------------------------------- public calls (never block)
    def _submit(self, op: dict[str, Any]) -> None:
        try:
            self.spool.append(op)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(self.spool.path, len(json.dumps(op))) from None
            raise
        self.sender.notify()

    def log_sweep_params(self, params: dict[str, Any]) -> None:
        """Sweep-level params on the parent (only the first time: params are immutable)."""
        self._submit({"op": "params", "trial": PARENT, "params": flatten_config(params)})

    def trial_run(self, trial_id: str, name: str, tags: dict[str, str], config: dict[str, Any]) -> str:
        """The child run of a trial (found by its trial_id tag, or created with params and its
        colour once); returns its run handle."""
        if trial_id not in self._open:
            self._open.add(trial_id)
            self._submit({"op": "run", "trial": trial_id, "name": name, "tags": self._coloured(tags),
                          "params": flatten_config(config)})
        return trial_id

    def set_run_colours(self, variants: list[str], seeds: list[Any]) -> None:
        """Colour new trial runs by variant (a hue each, in the spec's order) and seed (a shade), so
        the runs of one comparison are told apart in MLflow's charts."""
        self._variant_index = {v: i for i, v in enumerate(variants)}
        self._seed_index = {str(s): i for i, s in enumerate(seeds)}

    def _coloured(self, tags: dict[str, str]) -> dict[str, str]:
        """``tags`` plus RUN_COLOR_TAG from its variant and seed (labels not named up front get the
        next free index)."""
        variant = self._variant_index.setdefault(str(tags.get("variant")), len(self._variant_index))
        seed = self._seed_index.setdefault(str(tags.get("seed")), len(self._seed_index))
        return {**tags, RUN_COLOR_TAG: run_colour(variant, seed)}

    def log_metrics(self, run: str, metrics: dict[str, Any], step: int) -> None:
        """Finite numeric metrics at ``step``; a (run, key, step) already logged is never logged again."""
        ts = _ms()
        points = [[k, float(v), ts, int(step)] for k, v in metrics.items() if _finite(v)]
        points = self.spool.new_steps(run, points)
        if points:
            self._submit({"op": "metrics", "trial": run, "metrics": points})

    def _log_metrics(self, run: str, metrics: dict[str, Any], step: int, again: bool) -> None:
        if again:
            self._series(run, [[k, float(v), _ms(), int(step)] for k, v in metrics.items() if _finite(v)])
        else:
            self.log_metrics(run, metrics, step)

    def log_params(self, run: str, params: dict[str, Any]) -> None:
        """Params of a run (flattened; values an earlier run already set are kept)."""
        self._submit({"op": "params", "trial": run, "params": flatten_config(params)})

    def set_tags(self, run: str, tags: dict[str, Any]) -> None:
        self._submit({"op": "tags", "trial": run, "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def log_artifact(self, run: str, local_path: Path, artifact_path: Optional[str] = None) -> None:
        """A file as an artifact: copied into the spool now, uploaded by the sender."""
        self._submit({"op": "artifact", "trial": run, "file": self.spool.stash(Path(local_path)),
                      "name": Path(local_path).name, "artifact_path": artifact_path})

    def log_final(self, run: str, rows: list[dict[str, Any]], curves: dict[str, list[float]],
                  config: Optional[dict[str, Any]], step: int, again: bool = False) -> None:
        """Per-split metrics (``acc/ood_64`` ..., at SINGLE_VALUE_STEP whatever ``step``, the
        trial's last training step, says), the series against size and loop budget, the resolved
        config JSON (unless None) and a convergence plot. ``again``: log the metrics even where
        already logged (a rebuild of what MLflow lost)."""
        rows = by_protocol(rows)
        metrics: dict[str, Any] = {}
        for row in rows:
            for column in SPLIT_METRIC_NAMES:
                metrics[split_metric(column, row["split"])] = row.get(column)
        first = rows[0] if rows else {}
        for key in TRIAL_SUMMARY_COLUMNS:
            metrics[key] = first.get(key)
        self._log_metrics(run, metrics, SINGLE_VALUE_STEP, again)  # bars across runs, not lone dots
        self.log_size_series(run, rows)
        self.log_budget_curves(run, rows)
        tags = {"status": first.get("status", "failed")}
        if first.get("error"):
            tags["error"] = str(first["error"])[:5000]
        self.set_tags(run, tags)
        if config is not None:
            self._submit({"op": "json_artifact", "trial": run, "name": "config.json", "content": config})
        if any(curves.values()):
            self._submit({"op": "convergence", "trial": run, "curves": curves,
                          "title": f"{first.get('task', '')} {first.get('variant', '')}"})

    def is_open(self, trial_id: str) -> bool:
        """Did this driver open (or reopen) the trial's run and not end it yet?"""
        return trial_id in self._open

    def end_trial(self, trial_id: str, status: str) -> None:
        """Close a trial's run: ok/diverged/stopped -> FINISHED (status in a tag), failed -> FAILED."""
        self._open.discard(trial_id)
        self._submit({"op": "end", "trial": trial_id, "status": "FAILED" if status == "failed" else "FINISHED"})

    def end_sweep(self, status: str, drain_s: Optional[float] = None) -> Optional[str]:
        """FINISHED, FAILED (some trial failed) or KILLED (interrupted; resume continues it); then
        wait for the spool to be sent. Returns None when MLflow has everything, else a paragraph for
        the user (the server stayed unreachable; the writes wait in the spool for the next run)."""
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        try:
            for trial_id in sorted(self._open):
                self._submit({"op": "end", "trial": trial_id, "status": "KILLED"})
            self._submit({"op": "end", "trial": PARENT, "status": status})
        except DiskFull:  # the runs stay RUNNING until the next run ends them
            pass
        self._open.clear()
        return self.close(drain_s)

    def abandon(self) -> None:
        """Stop sending without another write (this driver lost the sweep to another one, which
        sends what the spool holds)."""
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        self.sender.stop()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every write so far reached MLflow (True) or ``timeout`` passes (False)."""
        return self.sender.drain(timeout)

    def close(self, drain_s: Optional[float] = None) -> Optional[str]:
        """Send what is left (waiting up to ``drain_s``), stop the sender; see ``end_sweep``."""
        wait = float(os.environ.get(DRAIN_ENV, DRAIN_S)) if drain_s is None else drain_s
        sent = self.sender.drain(wait)
        self.sender.stop()
        if sent:
            try:
                self.spool.compact()
            except OSError:  # a full disk: the spool stays, fully acked; the next run compacts it
                pass
            return None
        return self.sender.unsent_note(self.uri, len(self.spool.pending()))

    def find_trial_run(self, trial_id: str) -> Optional[str]:
        """The handle of a trial's existing run (its state left as it is), or None if it has none."""
        if trial_id in self._runs or self._find(f"tags.trial_id = '{trial_id}'") is not None:
            return trial_id
        return None

    def _series(self, run: str, points: list[list[Any]]) -> None:
        """Metric points logged as they are (series keyed by size or budget, not by training step)."""
        if points:
            self._submit({"op": "metrics", "trial": run, "metrics": points})

    def log_size_series(self, run: str, rows: list[dict[str, Any]]) -> None:
        """Each ok row's SIZE_SERIES metrics at step = its size (one point per split)."""
        ts = _ms()
        self._series(run, [[name, float(row[column]), ts, int(row["size"])]
                           for row in rows if row.get("status") == "ok" and row.get("size") is not None
                           for column, name in SIZE_SERIES.items() if _finite(row.get(column))])

    def log_budget_curves(self, run: str, rows: list[dict[str, Any]]) -> None:
        """Each ok row's test-time compute curve as ``by_loop_budget/exact_acc/<split>`` at step = budget."""
        ts = _ms()
        self._series(run, [[budget_metric(row["split"]), float(acc), ts, int(budget)]
                           for row in rows if row.get("status") == "ok"
                           for budget, acc in zip(row.get("budget_iters") or (), row.get("budget_acc") or ())
                           if _finite(acc)])

    def log_split_metrics(self, run: str, rows: list[dict[str, Any]], step: int) -> None:
        """Flat per-split metrics (``acc/ood_64`` ... at SINGLE_VALUE_STEP; ``step`` is the trial's
        training step) and the size series of rows evaluated after training (``fpr-sweep eval``).
        Not deduplicated by step: a re-evaluation (``--force``) adds a newer point at the same
        step, which MLflow then shows as the value."""
        rows = by_protocol(rows)
        ts = _ms()
        self._series(run, [[split_metric(column, row["split"]), float(row[column]), ts, SINGLE_VALUE_STEP]
                           for row in rows for column in SPLIT_METRIC_NAMES if _finite(row.get(column))])
        self.log_size_series(run, rows)
        self.log_budget_curves(run, rows)

    def log_datasets(self, run: str, records: list[DatasetRecord]) -> None:
        """The splits a trial trained and was evaluated on, as MLflow dataset inputs."""
        if records:
            self._submit({"op": "datasets", "trial": run, "records": [dataclasses.asdict(r) for r in records]})

    def describe(self, run: str, text: str) -> None:
        """The run's description (the Overview's 'Description' field)."""
        self.set_tags(run, {NOTE_TAG: text})

    def log_weights(self, run: str, path: Path, step: int, name: str, config: dict[str, Any],
                    again: bool = False) -> None:
        """The trial's saved model as a child-run artifact, its size as ``model/weights_bytes``, and
        an MLflow LoggedModel ``name`` (the run's Models field and the experiment's Models tab) that
        carries the config and points at the weights artifact rather than storing them twice.
        ``path`` stays where it is (models/<trial_id>.pt): the sender uploads it from there."""
        path = Path(path).resolve()
        self._log_metrics(run, {WEIGHTS_BYTES: path.stat().st_size}, SINGLE_VALUE_STEP, again)
        try:  # relative to the sweep folder: a folder moved with this write pending still sends it
            shown = str(path.relative_to(self.spool.root.resolve()))
        except ValueError:
            shown = str(path)
        self._submit({"op": "weights", "trial": run, "path": shown, "step": int(step), "name": name,
                      "config": config})

    def log_sweep_files(self, paths: list[Path], artifact_dir: Optional[str] = None) -> None:
        """Files of the sweep (spec, results.parquet, report.md, plots) as parent-run artifacts
        (copied into the spool now, so a later rewrite of the file does not change what is sent)."""
        for path in paths:
            if Path(path).is_file():
                self.log_artifact(PARENT, Path(path), artifact_dir)

    def log_sweep_summary(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Summary metrics (trials per status, best OOD accuracy per task) and tags on the parent, at
        SINGLE_VALUE_STEP (a resume logs a newer point there, which MLflow shows as the value). The
        parent carries none of the trials' metric keys: it has no data in their charts."""
        ts = _ms()
        self._series(PARENT, [[k, float(v), ts, SINGLE_VALUE_STEP] for k, v in metrics.items() if _finite(v)])
        if tags:
            self.set_tags(PARENT, tags)

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """Log this host's CPU, memory, disk and network use to the parent run (``system/...``)
        every ``interval_s`` from MLflow's own background thread, until ``end_sweep``."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(self.parent_id, sampling_interval=interval_s,
                                                    resume_logging=True, tracking_uri=self.uri)
        self._system_metrics.start()

    @property
    def warnings(self) -> list[str]:
        """Writes MLflow refused for good (bad values), and a torn spool, one line each."""
        torn = self.spool.torn_note()
        return ([torn] if torn else []) + list(self.sender.warnings)

    def reconcile(self, rows: dict[str, list[dict[str, Any]]], models: dict[str, Path],
                  wait_s: float = 30.0) -> list[str]:
        """Make the runs MLflow holds agree with the table, after a run (issue 33): a finished
        trial without a run gets one (tags, final metrics and status from its rows), a RUNNING run
        of a finished trial is ended, a run without its final metrics gets them, a kept model not
        logged is logged. ``rows``: trial_id -> its rows; ``models``: trial_id -> models/<id>.pt.
        Skipped (returns why) while the store does not take the spooled writes. Returns one line
        per trial repaired."""
        if not self.flush(wait_s):
            return []
        runs = {r.data.tags.get("trial_id"): r for r in self.child_runs()}
        notes = []
        for trial_id, trial_rows in sorted(rows.items()):
            first = trial_rows[0]
            run = runs.get(trial_id)
            did = []
            if run is None:
                tags = {k: str(first.get(k)) for k in ("task", "variant", "seed")}
                name = f"{first.get('task')}/{first.get('variant')}/s{first.get('seed')}/{trial_id}"
                self._submit({"op": "run", "trial": trial_id, "name": name, "tags": self._coloured(tags),
                              "params": {}})
                did.append("created its run")
            if run is None or "status" not in run.data.tags:
                self.log_final(trial_id, trial_rows, {}, None, int(first.get("train_steps") or 0), again=True)
                did.append("logged its final metrics")
            if run is None or run.info.status == "RUNNING":
                self.end_trial(trial_id, first["status"])
                if run is not None:
                    did.append("ended its RUNNING run")
            model = models.get(trial_id)
            if model is not None and model.exists() and (run is None or WEIGHTS_BYTES not in run.data.metrics):
                self.log_weights(trial_id, model, int(first.get("train_steps") or 0),
                                 f"{first.get('task')}-{trial_id}", {}, again=True)
                did.append("logged its model")
            if did:
                notes.append(f"MLflow: trial {trial_id}: " + ", ".join(did) + " (rebuilt from the rows on disk)")
        return notes

    def run_id(self, run: str) -> Optional[str]:
        """The MLflow run id behind a handle (after ``flush``), or None if it was never created."""
        if run in self._runs:
            return self._runs[run]
        return self._find(f"tags.trial_id = '{run}'")

    def child_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
                                       max_results=10000)


# ---------------------------------------------------------------- how the sender applies operations

@operation("run")
def _apply_run(sender: Sender, op: dict[str, Any]) -> None:
    _apply_params(sender, op)


@operation("params")
def _apply_params(sender: Sender, op: dict[str, Any]) -> None:
    run_id = sender.run_id(op)
    have = sender.client.get_run(run_id).data.params
    items = [Param(k, v[:6000]) for k, v in op["params"].items() if k not in have]
    for i in range(0, len(items), BATCH):
        sender.client.log_batch(run_id, params=items[i:i + BATCH])


@operation("metrics")
def _apply_metrics(sender: Sender, op: dict[str, Any]) -> None:
    run_id = sender.run_id(op)
    items = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
    for i in range(0, len(items), 1000):
        sender.client.log_batch(run_id, metrics=items[i:i + 1000])


@operation("tags")
def _apply_tags(sender: Sender, op: dict[str, Any]) -> None:
    run_id = sender.run_id(op)
    sender.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])


@operation("artifact")
def _apply_artifact(sender: Sender, op: dict[str, Any]) -> None:
    source = sender.spool.dir / op["file"]
    with tempfile.TemporaryDirectory() as tmp:  # upload under its own name, not the stash name
        named = Path(tmp) / op["name"]
        shutil.copyfile(source, named)
        sender.client.log_artifact(sender.run_id(op), str(named), op.get("artifact_path"))


@operation("json_artifact")
def _apply_json_artifact(sender: Sender, op: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / op["name"]
        path.write_text(json.dumps(op["content"], indent=2, sort_keys=True, default=str))
        sender.client.log_artifact(sender.run_id(op), str(path))


@operation("convergence")
def _apply_convergence(sender: Sender, op: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "convergence.png"
        convergence_plot(op["curves"], path, title=op.get("title", ""))
        sender.client.log_artifact(sender.run_id(op), str(path))


@operation("datasets")
def _apply_datasets(sender: Sender, op: dict[str, Any]) -> None:
    inputs = [DatasetInput(Dataset(r["name"], r["digest"], "code", r["source"], profile=r["profile"]),
                           tags=[InputTag("mlflow.data.context", r["context"])]) for r in op["records"]]
    sender.client.log_inputs(sender.run_id(op), datasets=inputs)


@operation("weights")
def _apply_weights(sender: Sender, op: dict[str, Any]) -> None:
    """Upload the weights, then one LoggedModel per (run, name): found again on a replay."""
    client, run_id, path = sender.client, sender.run_id(op), sender.spool.root / op["path"]
    client.log_artifact(run_id, str(path), WEIGHTS_ARTIFACT_DIR)
    weights_uri = f"runs:/{run_id}/{WEIGHTS_ARTIFACT_DIR}/{path.name}"
    exp_id = client.get_run(run_id).info.experiment_id
    found = [m for m in client.search_logged_models([exp_id], filter_string=f"name = '{op['name']}'")
             if m.source_run_id == run_id]
    if found:
        model = found[0]
    else:
        model = client.create_logged_model(
            exp_id, name=op["name"], source_run_id=run_id, model_type="fpr_core.LoopedModel",
            params={k: v[:6000] for k, v in flatten_config(op["config"]).items()},
            tags={"weights": weights_uri, "load_with": "mlflow.pyfunc.load_model('models:/<model_id>')"})
    with tempfile.TemporaryDirectory() as tmp:  # an MLmodel from code + the weights: docs/mlflow-models.md
        client.log_model_artifacts(model.model_id, str(save_pyfunc(path, Path(tmp) / "model", op["config"])))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(op["step"]))])
    link_run_to_models(client, run_id)


@operation("end")
def _apply_end(sender: Sender, op: dict[str, Any]) -> None:
    sender.client.set_terminated(sender.run_id(op), op["status"])
    if op["trial"] != PARENT:  # the final metrics are in by now: the run's LoggedModel carries them
        link_run_to_models(sender.client, sender.run_id(op))


def convergence_plot(curves: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Mean residual per loop step, one line per eval split, log-scale y (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for split, curve in curves.items():
        values = [v if v > 0 else float("nan") for v in curve]
        ax.plot(range(1, len(values) + 1), values, label=split)
    ax.set_yscale("log")
    ax.set_xlabel("loop step")
    ax.set_ylabel("mean residual r")
    ax.set_title(f"convergence {title}".strip())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
