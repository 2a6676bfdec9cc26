"""Kept models load as MLflow pyfunc models (``models:/<model_id>``) and predict what fpr_core
predicts; the LoggedModel carries the trial's final metrics tied to its datasets. Real MLflow
SQLite stores throughout: the Tracker's own sender, and (slow) a real tiny sweep through Ray."""
from __future__ import annotations

import pickletools
import zipfile

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from fpr_core.config import ExperimentConfig
from fpr_core.experiment import run_experiment, task_of
from fpr_core.saved_model import load_model, save_experiment_model
from orchestrator.store.run_info import dataset_records
from orchestrator.store.tracking import SweepTracker

from conftest import write_spec

TINY = {
    "task": {"name": "prefix_sums", "train_size": 6, "ood_sizes": [12]},
    "model": {"dim": 16, "heads": 2},
    "solver": {"train_cap": 4, "eval_cap": 8},
    "grad": "bptt",
    "train": {"steps": 6, "batch_size": 16, "n_train": 64, "warmup": 2, "log_every": 3, "checkpoint_every": 3},
    "eval": {"n_eval": 8, "batch_size": 8, "diag_n": 4, "power_iters": 2},
    "seed": 1,
}


def _fpr_predict(path, inputs, cap=None):
    """What fpr_core itself predicts for a task batch (the reference the pyfunc must match)."""
    model = load_model(path)
    task = task_of(ExperimentConfig.from_dict(TINY))[0]
    with torch.no_grad():
        return task.decode(model(torch.as_tensor(inputs), cap=cap).logits.float()).numpy()


def _assert_no_pickled_code(model_dir):
    """The model directory holds no pickle of a Python object: the weights file's pickle only
    references torch's tensor rebuild functions and plain containers (what weights_only admits)."""
    names = [p.name for p in model_dir.rglob("*")]
    assert "python_model.pkl" not in names and not any(n.endswith((".pkl", ".cloudpickle")) for n in names)
    for pt in model_dir.rglob("*.pt"):
        with zipfile.ZipFile(pt) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}
        assert all(str(g).startswith(("torch", "collections")) for g in globals_ if g), globals_


def test_tracker_logs_a_pyfunc_model_with_metrics_and_datasets(tmp_path):
    cfg = ExperimentConfig.from_dict(TINY)
    result = run_experiment(cfg, cache_dir=tmp_path, device="cpu")
    weights = tmp_path / "models" / "t1.pt"
    save_experiment_model(weights, result, cfg.to_dict(), meta={"trial_id": "t1"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "pyf", tmp_path, tags={}, sweep_id="s" * 32)
    run = tracker.trial_run("t1", "prefix_sums v1", {}, cfg.to_dict())
    tracker.log_weights(run, weights, 6, "prefix_sums-t1", cfg.to_dict())  # before the final metrics, as in a sweep
    rows = [{"split": s.split, "status": "ok", "exact_acc": s.metrics["exact_acc"], "iters_mean": s.metrics["iters_mean"],
             "train_seconds": 1.0, "train_steps": 6, "final_loss": 0.5} for s in result.splits]
    tracker.log_final(run, rows, {}, cfg.to_dict(), 6)
    infos = [{"split": d.split, "size": d.size, "n": d.n, "digest": d.digest} for d in result.datasets]
    tracker.log_datasets(run, dataset_records("prefix_sums", {}, 1, infos))
    tracker.end_trial("t1", "ok")
    assert tracker.end_sweep("FINISHED", drain_s=120) is None, tracker.warnings
    assert tracker.warnings == []

    client = MlflowClient(uri)
    run_id = tracker.run_id("t1")
    (output,) = client.get_run(run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.status == "READY" and logged.tags["weights"] == f"runs:/{run_id}/weights/t1.pt"
    by_key = {m.key: m for m in logged.metrics}
    recorded = {s.split: s.metrics["exact_acc"] for s in result.splits}
    assert by_key["acc/ood_12"].value == recorded["ood_12"] and by_key["acc/id"].value == recorded["id"]
    assert by_key["acc/ood_12"].dataset_name == "prefix_sums/ood_12" and by_key["acc/ood_12"].dataset_digest
    assert by_key["train_steps"].value == 6 and by_key["train_steps"].dataset_name is None
    assert "model/weights_bytes" in by_key

    mlflow.set_tracking_uri(uri)
    local = tmp_path / "downloaded"
    mlflow.artifacts.download_artifacts(f"models:/{output.model_id}", dst_path=str(local))
    assert (local / "MLmodel").is_file() and (local / "pyfunc_model.py").is_file()
    _assert_no_pickled_code(local)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    task = task_of(cfg)[0]
    batch = task.generate(4, 12, seed=99)
    pred = pyfunc.predict(batch.inputs, params={"cap": 16})
    assert pred.dtype == np.int64 and pred.shape == batch.inputs.shape
    np.testing.assert_array_equal(pred, _fpr_predict(weights, batch.inputs, cap=16))
    np.testing.assert_array_equal(pyfunc.predict(batch.inputs), _fpr_predict(weights, batch.inputs))  # cap 0: eval_cap


@pytest.mark.slow
def test_a_finished_sweeps_model_loads_by_id_and_predicts(spec_dir, ray_session, capsys):
    from orchestrator.cli import app

    path = write_spec(spec_dir, name="pyf", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    sweep_dir = spec_dir / "results" / "pyf"
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pyf")
    (model,) = client.search_logged_models([exp.experiment_id])
    assert {m.key for m in model.metrics} >= {"acc/id", "acc/ood_16", "train_steps"}
    assert {m.dataset_name for m in model.metrics if m.key.startswith("acc/")} == {"prefix_sums/id", "prefix_sums/ood_16"}

    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    task = task_of(ExperimentConfig.from_dict({"task": {"name": "prefix_sums"}}))[0]
    batch = task.generate(3, 16, seed=7)
    pred = pyfunc.predict(batch.inputs, params={"cap": 16})
    trial_id = model.name.split("-", 1)[1]
    np.testing.assert_array_equal(pred, _fpr_predict(sweep_dir / "models" / f"{trial_id}.pt", batch.inputs, cap=16))
    with capsys.disabled():  # the closing note quotes this
        print(f"\nmodel {model.model_id} ({model.name}); metrics "
              f"{ {m.key: round(m.value, 3) for m in model.metrics if m.key.startswith('acc/')} }")
        print(f"inputs  {batch.inputs.tolist()}\npredict {pred.tolist()}\ntargets {batch.targets.tolist()}")
