"""MLflow tracking (the only module importing mlflow). Only the Ray driver writes here, so a
SQLite store never sees concurrent writers.

One experiment per sweep (artifacts under the sweep's results dir), one parent run for the sweep
and one nested child run per trial. Runs are found again by tag (``fpr.role = sweep`` for the
parent, ``trial_id`` for a child), so a resumed sweep continues its runs instead of opening
duplicates (Ray's stock MLflowLoggerCallback opens a second run per trial after a restore).
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.store.run_info import DatasetRecord
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.metrics import (SIZE_SERIES, SPLIT_METRIC_NAMES, TRIAL_SUMMARY_COLUMNS, WEIGHTS_BYTES,
                                        budget_metric, split_metric)

PARENT_TAG = "mlflow.parentRunId"
WEIGHTS_ARTIFACT_DIR = "weights"
"""Child-run artifact folder holding the trial's saved model."""
NOTE_TAG = "mlflow.note.content"
"""Run and experiment description, as the MLflow UI shows and edits it."""
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
"""The experiment type the MLflow 3 UI opens in (model training rather than GenAI)."""
BATCH = 100
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is meant for the user."""


def default_tracking_uri(sweep_dir: Path) -> str:
    """SQLite store inside the sweep's results dir (MLflow 3 refuses the plain ./mlruns store)."""
    return f"sqlite:///{SweepDir(Path(sweep_dir).resolve()).mlflow_db}"


def store_exists(uri: str) -> bool:
    """False for a SQLite store whose file is missing (opening it would create an empty one)."""
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri[len(prefix):]).exists()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an http(s) tracking server, fail fast with a clear message if it does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({reason}); start it "
                            f"(mlflow server --host 127.0.0.1 --port 5000) or pass another --tracking-uri.") from None


def ui_command(uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `mlflow server` command serving ``uri`` on ``host`` (what `fpr-sweep ui` runs); one
    worker process is plenty for browsing a sweep."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def run_ui(uri: str, port: int, host: str = "127.0.0.1") -> int:
    """Serve the MLflow UI in the foreground until interrupted; returns its exit code."""
    try:
        return subprocess.run(ui_command(uri, port, host)).returncode
    except KeyboardInterrupt:
        return 0


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


class SweepTracker:
    """MLflow runs of one sweep: the parent run and one child run per trial."""

    def __init__(self, uri: str, sweep: str, sweep_dir: Path, tags: dict[str, str],
                 description: str = "", reopen: bool = True) -> None:
        """``reopen``: mark the parent run RUNNING (a run or resume); False attaches to a
        finished sweep without changing its state (``fpr-sweep eval``, ``report``)."""
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.tags = dict(tags)
        self.experiment_id = self._experiment(sweep, SweepDir(Path(sweep_dir).resolve()).mlflow_artifacts)
        self._describe_experiment(description)
        self.parent_id = self._parent_run(sweep, reopen)
        if description:
            self.client.set_tag(self.parent_id, NOTE_TAG, description)
        self._runs: dict[str, str] = {}

    def _describe_experiment(self, description: str) -> None:
        """Training experiment (the UI opens in model-training mode), described by the spec."""
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        if description:
            self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, description)

    def _experiment(self, sweep: str, artifacts: Path) -> str:
        try:
            exp = self.client.get_experiment_by_name(sweep)
        except Exception as e:  # a broken store: report what and where, not a stack of SQL
            raise TrackingError(f"cannot open the MLflow store {self.uri}: {e}") from None
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        artifacts.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(sweep, artifact_location=artifacts.as_uri(),
                                             tags={"fpr.sweep": sweep})

    def _find(self, filter_string: str) -> Optional[str]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def _parent_run(self, sweep: str, reopen: bool = True) -> str:
        run_id = self._find("tags.`fpr.role` = 'sweep'")
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep,
                                         tags={"fpr.role": "sweep", **self.tags})
            return run.info.run_id
        if reopen:
            self.client.update_run(run_id, status="RUNNING")
        for key, value in self.tags.items():
            self.client.set_tag(run_id, key, value)
        return run_id

    def log_sweep_params(self, params: dict[str, Any]) -> None:
        """Sweep-level params on the parent (only the first time: params are immutable)."""
        have = self.client.get_run(self.parent_id).data.params
        self._log_params(self.parent_id, {k: v for k, v in flatten_config(params).items() if k not in have})

    def trial_run(self, trial_id: str, name: str, tags: dict[str, str], config: dict[str, Any]) -> str:
        """The child run of a trial: found by its trial_id tag, or created (with params) once."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        run_id = self._find(f"tags.trial_id = '{trial_id}'")
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={PARENT_TAG: self.parent_id, "trial_id": trial_id,
                                               **self.tags, **tags})
            run_id = run.info.run_id
            self._log_params(run_id, flatten_config(config))
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._runs[trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        """Finite numeric metrics at ``step`` in one batch."""
        ts = _ms()
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_final(self, run_id: str, rows: list[dict[str, Any]], curves: dict[str, list[float]],
                  config: dict[str, Any], step: int) -> None:
        """Per-split metrics (``acc/ood_64`` ...), the size series (``ood/exact_acc`` at step = size),
        the resolved config JSON and a convergence plot."""
        metrics: dict[str, Any] = {}
        for row in rows:
            for column in SPLIT_METRIC_NAMES:
                metrics[split_metric(column, row["split"])] = row.get(column)
        first = rows[0] if rows else {}
        for key in TRIAL_SUMMARY_COLUMNS:
            metrics[key] = first.get(key)
        self.log_metrics(run_id, metrics, step)
        self.log_size_series(run_id, rows)
        self.log_budget_curves(run_id, rows)
        status = first.get("status", "failed")
        self.client.set_tag(run_id, "status", status)
        if first.get("error"):
            self.client.set_tag(run_id, "error", str(first["error"])[:5000])
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "config.json"
            cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
            self.client.log_artifact(run_id, str(cfg_path))
            if any(curves.values()):
                plot = Path(tmp) / "convergence.png"
                convergence_plot(curves, plot, title=f"{first.get('task', '')} {first.get('variant', '')}")
                self.client.log_artifact(run_id, str(plot))

    def is_open(self, trial_id: str) -> bool:
        """Did this driver open (or reopen) the trial's run and not end it yet?"""
        return trial_id in self._runs

    def end_trial(self, trial_id: str, status: str) -> None:
        """Close a trial's run: ok/diverged/stopped -> FINISHED (status in a tag), failed -> FAILED."""
        run_id = self._runs.pop(trial_id, None) or self._find(f"tags.trial_id = '{trial_id}'")
        if run_id is not None:
            self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def end_sweep(self, status: str) -> None:
        """FINISHED, FAILED (some trial failed) or KILLED (interrupted; resume continues it)."""
        if getattr(self, "_system_metrics", None) is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        for trial_id in list(self._runs):
            self.client.set_terminated(self._runs.pop(trial_id), "KILLED")
        self.client.set_terminated(self.parent_id, status)

    def find_trial_run(self, trial_id: str) -> Optional[str]:
        """The child run of a trial, or None; its state is left as it is."""
        return self._runs.get(trial_id) or self._find(f"tags.trial_id = '{trial_id}'")

    def log_size_series(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Each ok row's SIZE_SERIES metrics at step = its size (one point per split)."""
        ts = _ms()
        items = [Metric(name, float(row[column]), ts, int(row["size"]))
                 for row in rows if row.get("status") == "ok" and row.get("size") is not None
                 for column, name in SIZE_SERIES.items() if _finite(row.get(column))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_budget_curves(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Each ok row's test-time compute curve as ``ttc/exact_acc/<split>`` at step = budget."""
        ts = _ms()
        items = [Metric(budget_metric(row["split"]), float(acc), ts, int(budget))
                 for row in rows if row.get("status") == "ok"
                 for budget, acc in zip(row.get("budget_iters") or (), row.get("budget_acc") or ()) if _finite(acc)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_split_metrics(self, run_id: str, rows: list[dict[str, Any]], step: int) -> None:
        """Flat per-split metrics (``acc/ood_64`` ... at ``step``) and the size series."""
        self.log_metrics(run_id, {split_metric(column, row["split"]): row.get(column)
                                  for row in rows for column in SPLIT_METRIC_NAMES}, step)
        self.log_size_series(run_id, rows)
        self.log_budget_curves(run_id, rows)

    def log_datasets(self, run_id: str, records: list[DatasetRecord]) -> None:
        """The splits a trial trained and was evaluated on, as MLflow dataset inputs."""
        if not records:
            return
        inputs = [DatasetInput(Dataset(r.name, r.digest, "code", r.source, profile=r.profile),
                               tags=[InputTag("mlflow.data.context", r.context)]) for r in records]
        self.client.log_inputs(run_id, datasets=inputs)

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (the Overview's 'Description' field)."""
        self.client.set_tag(run_id, NOTE_TAG, text)

    def log_weights(self, run_id: str, path: Path, step: int, name: str, config: dict[str, Any]) -> str:
        """The trial's saved model as a child-run artifact, its size as ``model/weights_bytes``, and
        an MLflow LoggedModel ``name`` (the run's Models field and the experiment's Models tab) that
        carries the config and points at the weights artifact rather than storing them twice.
        Returns the LoggedModel's id."""
        path = Path(path)
        self.client.log_artifact(run_id, str(path), WEIGHTS_ARTIFACT_DIR)
        self.log_metrics(run_id, {WEIGHTS_BYTES: path.stat().st_size}, step)
        weights_uri = f"runs:/{run_id}/{WEIGHTS_ARTIFACT_DIR}/{path.name}"
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, model_type="fpr_core.LoopedModel",
            params={k: v[:6000] for k, v in flatten_config(config).items()},
            tags={"weights": weights_uri, "load_with": "fpr_core.saved_model.load_model(path)"})
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
            Path(tmp, "WEIGHTS.txt").write_text(f"{weights_uri}\nload: fpr_core.saved_model.load_model(path)\n")
            self.client.log_model_artifacts(model.model_id, tmp)
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(step))])
        return model.model_id

    def log_sweep_files(self, paths: list[Path], artifact_dir: Optional[str] = None) -> None:
        """Files of the sweep (spec, results.parquet, report.md, plots) as parent-run artifacts."""
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.parent_id, str(path), artifact_dir)

    def log_sweep_summary(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Summary metrics (trials per status, best OOD accuracy per task) and tags on the parent."""
        self.log_metrics(self.parent_id, metrics, 0)
        for key, value in tags.items():
            self.client.set_tag(self.parent_id, key, value)

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """Log this host's CPU, memory, disk and network use to the parent run (``system/...``)
        every ``interval_s`` from a background thread, until ``end_sweep``."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(self.parent_id, sampling_interval=interval_s,
                                                    resume_logging=True, tracking_uri=self.uri)
        self._system_metrics.start()

    def child_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
                                       max_results=10000)


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
