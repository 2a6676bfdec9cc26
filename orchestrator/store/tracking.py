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

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.metrics import SPLIT_METRIC_NAMES, TRIAL_SUMMARY_COLUMNS, split_metric

PARENT_TAG = "mlflow.parentRunId"
BATCH = 100
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is meant for the user."""


def default_tracking_uri(sweep_dir: Path) -> str:
    """SQLite store inside the sweep's results dir (MLflow 3 refuses the plain ./mlruns store)."""
    return f"sqlite:///{SweepDir(Path(sweep_dir).resolve()).mlflow_db}"


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

    def __init__(self, uri: str, sweep: str, sweep_dir: Path, tags: dict[str, str]) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.tags = dict(tags)
        self.experiment_id = self._experiment(sweep, SweepDir(Path(sweep_dir).resolve()).mlflow_artifacts)
        self.parent_id = self._parent_run(sweep)
        self._runs: dict[str, str] = {}

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

    def _parent_run(self, sweep: str) -> str:
        run_id = self._find("tags.`fpr.role` = 'sweep'")
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep,
                                         tags={"fpr.role": "sweep", **self.tags})
            return run.info.run_id
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
        """Per-split metrics (``acc/ood_64`` ...), the resolved config JSON and a convergence plot."""
        metrics: dict[str, Any] = {}
        for row in rows:
            for column in SPLIT_METRIC_NAMES:
                metrics[split_metric(column, row["split"])] = row.get(column)
        first = rows[0] if rows else {}
        for key in TRIAL_SUMMARY_COLUMNS:
            metrics[key] = first.get(key)
        self.log_metrics(run_id, metrics, step)
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
        for trial_id in list(self._runs):
            self.client.set_terminated(self._runs.pop(trial_id), "KILLED")
        self.client.set_terminated(self.parent_id, status)

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
