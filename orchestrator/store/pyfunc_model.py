"""A kept fpr_core model as an MLflow pyfunc, defined from code (MLflow's models-from-code).

MLflow copies this file into each LoggedModel (``python_model.py``) and runs it on
``mlflow.pyfunc.load_model("models:/<model_id>")``; ``set_model`` below names the model it serves.
Nothing is unpickled: the weights are the trial's saved-model file (artifact ``weights``), read with
``torch.load(weights_only=True)`` by fpr_core.saved_model, and the network is rebuilt from the
config stored inside it. Loading needs fpr_core importable (this package installed).

``predict(inputs, params={"cap": n})``: inputs are a task batch as the task generates it
(``TaskData.inputs``: int64 (B, T) for sequence tasks, (B, H, W) for grid tasks); the result is the
predicted classes, int64 of the same shape (``task.decode`` of the logits). ``cap`` is the loop
budget; 0 (the default) means the trial's own eval cap at its training size, so pass a larger cap
for larger instances (the sweep's evaluation scales it with size, see fpr_core.evaluate).
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class LoopedPyfunc(PythonModel):
    """A saved LoopedModel (its ``eval`` weights: EMA when the trial used EMA) behind pyfunc predict."""

    def load_context(self, context) -> None:
        from fpr_core.experiment import task_of
        from fpr_core.saved_model import read_saved

        saved = read_saved(context.artifacts["weights"])
        self.model = saved.build("eval")
        self.task = task_of(saved.experiment_config())[0]

    def predict(self, context, model_input, params=None):  # no type hints: the signature validates
        import numpy as np
        import torch

        inputs = torch.as_tensor(np.asarray(model_input, dtype=np.int64))  # (B, *shape)
        cap = int((params or {}).get("cap") or 0) or None
        with torch.no_grad():
            logits = self.model(inputs, cap=cap).logits.float()  # (B, *shape, n_classes)
        return self.task.decode(logits).cpu().numpy().astype(np.int64)  # (B, *shape)


mlflow.models.set_model(LoopedPyfunc())
