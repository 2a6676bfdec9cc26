"""MLflow bookkeeping against a real SQLite store: runs found again by tag, never duplicated."""
from __future__ import annotations

import socket

import pytest
from mlflow import MlflowClient

from orchestrator.store import tracking

ROWS = [{"split": "id", "exact_acc": 0.75, "token_acc": 0.9, "iters_mean": 5.0, "iters_p95": 9.0,
         "reachability": 1.0, "input_dependence": 0.3, "spectral_radius": 0.8, "status": "ok",
         "train_seconds": 1.5, "train_steps": 10, "final_loss": 0.1, "variant": "recall=none"},
        {"split": "ood_64", "exact_acc": 0.25, "iters_mean": 11.0, "spectral_radius": float("nan"),
         "status": "ok", "variant": "recall=none"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    return d, tracking.default_tracking_uri(d)


def test_runs_are_reused_after_reopening(store):
    sweep_dir, uri = store
    first = tracking.SweepTracker(uri, "trk", sweep_dir, {"spec_hash": "h1"})
    run_a = first.trial_run("t1", "prefix_sums/none/s0", {"task": "prefix_sums"}, {"model": {"recall": "none"}})
    first.log_metrics(run_a, {"train/loss": 0.5, "train/skip": None}, step=5)
    first.end_sweep("KILLED")  # as after an interruption
    second = tracking.SweepTracker(uri, "trk", sweep_dir, {"spec_hash": "h1"})  # a resumed driver
    assert second.parent_id == first.parent_id
    assert second.trial_run("t1", "x", {}, {"model": {"recall": "none"}}) == run_a
    run_b = second.trial_run("t2", "y", {}, {"model": {"recall": "standard"}})
    children = second.child_runs()
    assert sorted(r.data.tags["trial_id"] for r in children) == ["t1", "t2"]
    assert all(r.data.tags[tracking.PARENT_TAG] == first.parent_id for r in children)
    client = MlflowClient(uri)
    run = client.get_run(run_a)
    assert run.data.params["model.recall"] == "none" and run.data.metrics["train/loss"] == 0.5
    assert client.get_experiment(second.experiment_id).artifact_location.startswith(
        (sweep_dir / "mlartifacts").resolve().as_uri())
    second.end_trial("t2", "failed")
    assert client.get_run(run_b).info.status == "FAILED"


def test_final_metrics_and_artifacts(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-final", sweep_dir, {})
    run_id = tr.trial_run("t9", "n", {}, {"seed": 0})
    tr.log_final(run_id, ROWS, {"id": [0.5, 0.1, 0.01], "ood_64": [0.6, 0.3, 0.2]}, {"seed": 0}, step=10)
    tr.end_trial("t9", "ok")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    m = run.data.metrics
    assert m["acc/id"] == 0.75 and m["acc/ood_64"] == 0.25 and m["iters_p95/id"] == 9.0
    assert "spectral_radius/ood_64" not in m  # nan and missing values are skipped
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"config.json", "convergence.png"}


def test_unreachable_server_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(tracking.TrackingError, match=f"127.0.0.1:{port}.*not reachable"):
        tracking.check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    tracking.check_reachable("sqlite:////tmp/x.db")  # local stores need no check


def test_flatten_config():
    assert tracking.flatten_config({"model": {"recall": "none", "spectral": None}, "task": {"ood_sizes": [32, 64]}}) == {
        "model.recall": "none", "model.spectral": "None", "task.ood_sizes": "[32, 64]"}
