"""Links that open the MLflow UI in model-training mode.

What MLflow 3.17's UI reads (its JS bundle, mlflow/server/js/build/static/js): the mode is the
*workflow type* of the page, ``genai`` or ``machine_learning``, taken from the URL's
``workflowType`` query parameter, else from the browser's localStorage key ``mlflow.workflowType``
(set by the sidebar's "GenAI | Model training" switch), else ``genai``. The experiment tag
``mlflow.experimentKind`` is no longer consulted for it (the hook that read it is behind a feature
flag hard-wired on), so a tag alone leaves a new browser in GenAI mode: traces, judges, prompts.
We still set the tag (orchestrator/store/tracking.py) for MLflow versions and tools that read it,
and hand out URLs that carry the parameter; the UI keeps it as one navigates the experiment.
"""
from __future__ import annotations

from typing import Optional

WORKFLOW_PARAM = "workflowType=machine_learning"
"""The query parameter that opens MLflow 3's UI in model-training mode."""


def training_url(base: str, experiment_id: Optional[str] = None) -> str:
    """``http://host:port`` -> the experiment's Runs page (or the experiments list) in training mode."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW_PARAM}"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW_PARAM}"


def sweep_experiment_id(uri: str) -> Optional[str]:
    """The one training experiment of a sweep's own store (None when there is not exactly one, or
    the store cannot be read: the caller then links the experiments list)."""
    try:
        from mlflow.tracking import MlflowClient

        from orchestrator.store.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND

        found = MlflowClient(tracking_uri=uri).search_experiments(
            filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{TRAINING_KIND}'", max_results=2)
    except Exception:
        return None
    return found[0].experiment_id if len(found) == 1 else None
