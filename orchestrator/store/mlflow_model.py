"""Kept models as MLflow models: a pyfunc directory from code, and the metrics and datasets a
LoggedModel carries. Called by the tracking sender (orchestrator/store/tracking.py), never by Ray.

The LoggedModel of a trial holds an ``MLmodel`` (pyfunc flavor, models-from-code:
orchestrator/store/pyfunc_model.py) with the trial's saved-model file as its ``weights`` artifact, so
``mlflow.pyfunc.load_model("models:/<model_id>")`` works with no pickle anywhere. Its metrics are the
run's final per-split metrics (``acc/ood_16`` ...), each tied to the dataset it was measured on
(``<task>/<split>``, the run's dataset inputs), which is how MLflow 3 shows a model's datasets.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

CODE = Path(__file__).with_name("pyfunc_model.py")
"""The model's code, copied into every LoggedModel."""
MODEL_METRIC_PREFIXES = ("acc/", "token_acc/", "iters_mean/", "iters_p95/", "reachability/")
"""Run metrics a LoggedModel carries, one per evaluated split (the final values)."""
MODEL_SUMMARY_METRICS = ("train_seconds", "train_steps", "final_loss", "model/weights_bytes")
"""Run metrics a LoggedModel carries with no dataset."""


def _requirements() -> list[str]:
    """Pinned from this environment; given explicitly, since inferring them would import and load the
    model in a subprocess for every kept trial."""
    import torch
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]
    try:
        reqs.append(f"fpr-sweep=={version('fpr-sweep')}")
    except PackageNotFoundError:
        pass
    return reqs


def signature(grid: bool) -> ModelSignature:
    """int64 task inputs (B, T) or (B, H, W) -> predicted classes of the same shape; ``cap`` param."""
    shape = (-1, -1, -1) if grid else (-1, -1)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.int64), shape)]),
                          outputs=Schema([TensorSpec(np.dtype(np.int64), shape)]),
                          params=ParamSchema([ParamSpec("cap", "long", 0)]))


def save_pyfunc(weights: Path, dest: Path, config: dict[str, Any]) -> Path:
    """Write an MLflow pyfunc model directory for a saved-model file at ``dest`` (must not exist)."""
    from fpr_core.saved_model import read_saved

    saved = read_saved(weights)
    mlflow.pyfunc.save_model(
        str(dest), python_model=str(CODE), artifacts={"weights": str(weights)}, signature=signature(saved.grid),
        pip_requirements=_requirements(),
        metadata={"fpr.trial_id": str(saved.meta.get("trial_id", "")), "fpr.task": config.get("task", {}).get("name", "")})
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return dest


def link_run_to_models(client: Any, run_id: str) -> None:
    """Give every LoggedModel the run output its final metrics (and their datasets). Idempotent: a
    metric the model already carries is not logged again; a run with no model is left alone."""
    run = client.get_run(run_id)
    models = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    if not models:
        return
    datasets = {d.dataset.name.split("/", 1)[-1]: d.dataset for d in (run.inputs.dataset_inputs if run.inputs else [])}
    wanted = [m for m in run.data._metric_objs
              if m.key.startswith(MODEL_METRIC_PREFIXES) or m.key in MODEL_SUMMARY_METRICS]
    for model_id in models:
        have = {m.key for m in client.get_logged_model(model_id).metrics or []}
        items = []
        for m in wanted:
            if m.key in have:
                continue
            d = datasets.get(m.key.split("/")[-1]) if m.key.startswith(MODEL_METRIC_PREFIXES) else None
            items.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                dataset_name=d.name if d else None, dataset_digest=d.digest if d else None))
        for i in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[i:i + 500])
