"""Links that open the MLflow UI in model-training mode.

What MLflow 3.17's UI reads (its JS bundle, mlflow/server/js/build/static/js): the mode is the
*workflow type* of the page, ``genai`` or ``machine_learning``, taken from the URL's
``workflowType`` query parameter, else from the browser's localStorage key ``mlflow.workflowType``
(set by the sidebar's "GenAI | Model training" switch), else ``genai``. The experiment tag
``mlflow.experimentKind`` is no longer consulted for it (the hook that read it is behind a feature
flag hard-wired on), so a tag alone leaves a new browser in GenAI mode: traces, judges, prompts.
We still set the tag (orchestrator/store/tracking.py) for MLflow versions and tools that read it,
and hand out URLs that carry the parameter; the UI keeps it as one navigates the experiment.

The page opens on a saved view of the trials. Trials are nested runs under the sweep's run, and the UI
shows a parent collapsed and charts only the rows it shows: opened bare, every chart held the sweep's
run alone. A view cannot expand rows (a shared view's state drops ``runsExpanded``), but it can group
them, and grouped rows are listed and charted: TRIALS_VIEW groups the trials by task and variant,
each group one colour and one line (the mean over its seeds). MLflow stores a saved view as the
experiment tag ``mlflow.sharedViewState.<key>`` holding ``{name, createdAt, updatedAt, state}``
(state: the page's JSON state), and opens it from the URL's ``viewStateShareKey``; the "Views" menu
lists it by name. Seen in headless Chromium (tests/test_ui_mode.py).
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
"""The experiment type tag of MLflow 3 (model training rather than GenAI): set on every sweep
experiment, and how ``sweep_experiment_id`` finds the training experiment of a store."""
WORKFLOW_PARAM = "workflowType=machine_learning"
"""The query parameter that opens MLflow 3's UI in model-training mode."""


TRIALS_VIEW = "trials"
"""Key of the saved view the UI opens on (the experiment tag VIEW_TAG_PREFIX + key)."""
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def trials_view_tag() -> tuple[str, str]:
    """(tag key, tag value) of the saved view "Trials by task and variant": every trial listed and
    charted, grouped by the ``task`` and ``variant`` tags each trial run carries, groups averaged."""
    state = {"groupBy": {"aggregateFunction": "average",
                         "groupByKeys": [{"mode": "tag", "groupByData": "task"},
                                         {"mode": "tag", "groupByData": "variant"}]},
             "runsHiddenMode": "SHOW_ALL", "useGroupedValuesInCharts": True}
    now = int(time.time() * 1000)
    envelope = {"name": "Trials by task and variant", "createdAt": now, "updatedAt": now,
                "state": json.dumps(state)}
    return VIEW_TAG_PREFIX + TRIALS_VIEW, json.dumps(envelope)


def training_url(base: str, experiment_id: Optional[str] = None) -> str:
    """``http://host:port`` -> the experiment's Runs page on the trials view (or the experiments
    list), in training mode."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW_PARAM}"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW_PARAM}&viewStateShareKey={TRIALS_VIEW}"


def save_trials_view(client: Any, experiment_id: str) -> None:
    """Store the trials view on the experiment unless it holds one (a user may have edited it)."""
    key, value = trials_view_tag()
    if key not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, key, value)


def sweep_experiment_id(uri: str) -> Optional[str]:
    """The one training experiment of a sweep's own store, its trials view saved (a store written
    before there was one gets it here); None when there is not exactly one, or the store cannot be
    read: the caller then links the experiments list."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.search_experiments(
            filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{TRAINING_KIND}'", max_results=2)
        if len(found) != 1:
            return None
        save_trials_view(client, found[0].experiment_id)
    except Exception:
        return None
    return found[0].experiment_id
