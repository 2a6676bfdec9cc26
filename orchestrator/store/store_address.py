"""Where a sweep's MLflow store is, and whether a tracking server answers: what `fpr-sweep` decides
before it opens the store. No mlflow import here (about 1 s): `fpr-sweep run` imports mlflow in the
thread that opens the store, while Ray starts (orchestrator/run/driver.py, session.py)."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.sweep.errors import TrackingError
from orchestrator.sweep.layout import SweepDir, SweepPath


def default_tracking_uri(sweep_dir: SweepPath) -> str:
    """SQLite store inside the sweep's results dir (MLflow 3 refuses the plain ./mlruns store)."""
    return f"sqlite:///{SweepDir.of(sweep_dir).resolved().mlflow_db}"


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
