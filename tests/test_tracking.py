"""MLflow bookkeeping against a real SQLite store: runs found again by tag, never duplicated."""
from __future__ import annotations

import socket
import time

import pytest
from mlflow import MlflowClient

from orchestrator.store import store_address, tracking

ROWS = [{"split": "id", "exact_acc": 0.75, "token_acc": 0.9, "iters_mean": 5.0, "iters_p95": 9.0,
         "reachability": 1.0, "input_dependence": 0.3, "spectral_radius": 0.8, "status": "ok",
         "train_seconds": 1.5, "train_steps": 10, "final_loss": 0.1, "variant": "recall=none"},
        {"split": "ood_64", "exact_acc": 0.25, "iters_mean": 11.0, "spectral_radius": float("nan"),
         "status": "ok", "variant": "recall=none"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    return d, store_address.default_tracking_uri(d)


def test_runs_are_reused_after_reopening(store):
    sweep_dir, uri = store
    first = tracking.SweepTracker(uri, "trk", sweep_dir, {"spec_hash": "h1"})
    handle = first.trial_run("t1", "prefix_sums/none/s0", {"task": "prefix_sums"}, {"model": {"recall": "none"}})
    first.log_metrics(handle, {"train/loss": 0.5, "train/skip": None}, step=5)
    assert first.end_sweep("KILLED") is None  # as after an interruption; everything was sent
    run_a = first.run_id(handle)
    second = tracking.SweepTracker(uri, "trk", sweep_dir, {"spec_hash": "h1"})  # a resumed driver
    assert second.parent_id == first.parent_id
    second.trial_run("t1", "x", {}, {"model": {"recall": "none"}})
    handle_b = second.trial_run("t2", "y", {}, {"model": {"recall": "standard"}})
    assert second.flush(30)
    assert second.run_id("t1") == run_a
    run_b = second.run_id(handle_b)
    children = second.child_runs()
    assert sorted(r.data.tags["trial_id"] for r in children) == ["t1", "t2"]
    assert all(r.data.tags[tracking.PARENT_TAG] == first.parent_id for r in children)
    client = MlflowClient(uri)
    run = client.get_run(run_a)
    assert run.data.params["model.recall"] == "none" and run.data.metrics["train/loss"] == 0.5
    assert client.get_experiment(second.experiment_id).artifact_location.startswith(
        (sweep_dir / "mlartifacts").resolve().as_uri())
    second.end_trial("t2", "failed")
    assert second.close() is None
    assert client.get_run(run_b).info.status == "FAILED"


def test_final_metrics_and_artifacts(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-final", sweep_dir, {})
    handle = tr.trial_run("t9", "n", {}, {"seed": 0})
    tr.log_final(handle, ROWS, {"id": [0.5, 0.1, 0.01], "ood_64": [0.6, 0.3, 0.2]}, {"seed": 0}, step=10)
    tr.end_trial("t9", "ok")
    assert tr.close() is None
    run_id = tr.run_id(handle)
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
    with pytest.raises(store_address.TrackingError, match=f"127.0.0.1:{port}.*not reachable"):
        store_address.check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    store_address.check_reachable("sqlite:////tmp/x.db")  # local stores need no check


def test_flatten_config():
    assert tracking.flatten_config({"model": {"recall": "none", "spectral": None}, "task": {"ood_sizes": [32, 64]}}) == {
        "model.recall": "none", "model.spectral": "None", "task.ood_sizes": "[32, 64]"}


def test_size_series_one_point_per_size(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-series", sweep_dir, {})
    handle = tr.trial_run("t5", "n", {}, {"seed": 0})
    rows = [dict(ROWS[0], size=16), dict(ROWS[1], size=64), {"split": "ood_32", "size": 32, "status": "ok",
                                                            "exact_acc": 0.5, "reachability": 0.9}]
    tr.log_final(handle, rows, {}, {"seed": 0}, step=450)
    assert tr.close() is None
    run_id = tr.run_id(handle)
    client = MlflowClient(uri)
    history = client.get_metric_history(run_id, "by_size/exact_acc")
    assert sorted((m.step, m.value) for m in history) == [(16, 0.75), (32, 0.5), (64, 0.25)]
    assert [m.step for m in client.get_metric_history(run_id, "by_size/reachability")] == [16, 32]
    assert client.get_metric_history(run_id, "acc/ood_64")[0].step == 0  # single values at step 0: bar charts


def test_test_time_compute_curve_per_split(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-ttc", sweep_dir, {})
    handle = tr.trial_run("t6", "n", {}, {"seed": 0})
    rows = [dict(ROWS[0], size=16, budget_iters=[1, 4, 16], budget_acc=[0.0, 0.5, 0.75]),
            dict(ROWS[1], size=64, budget_iters=[1, 8, 64], budget_acc=[0.0, 0.1, float("nan")])]
    tr.log_final(handle, rows, {}, {"seed": 0}, step=450)
    assert tr.close() is None
    run_id = tr.run_id(handle)
    client = MlflowClient(uri)
    assert _points(client, run_id, "by_loop_budget/exact_acc/id") == [(1, 0.0), (4, 0.5), (16, 0.75)]
    assert _points(client, run_id, "by_loop_budget/exact_acc/ood_64") == [(1, 0.0), (8, 0.1)]


def _points(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_descriptions_kind_datasets_and_summary(store):
    from orchestrator.store.run_info import DatasetRecord

    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-fields", sweep_dir, {"mlflow.user": "alice"}, description="what we ask")
    client = MlflowClient(uri)
    exp = client.get_experiment(tr.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == "what we ask"
    parent = client.get_run(tr.parent_id)
    assert parent.data.tags["mlflow.note.content"] == "what we ask" and parent.data.tags["mlflow.user"] == "alice"
    handle = tr.trial_run("t7", "n", {}, {"seed": 0})
    tr.describe(handle, "prefix_sums trained at 16")
    tr.log_datasets(handle, [DatasetRecord("prefix_sums/train", "abc", "{}", '{"instances": 64}', "training"),
                             DatasetRecord("prefix_sums/id", "def", "{}", "{}", "evaluation")])
    assert tr.flush(60)
    run_id = tr.run_id(handle)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.note.content"] == "prefix_sums trained at 16"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"prefix_sums/train", "prefix_sums/id"}
    assert inputs["prefix_sums/train"].dataset.digest == "abc"
    assert inputs["prefix_sums/train"].tags[0].value == "training"
    tr.log_sweep_summary({"trials/ok": 3.0}, {"best_variant/prefix_sums": "recall=standard"})
    assert tr.end_sweep("FINISHED") is None
    again = tracking.SweepTracker(uri, "trk-fields", sweep_dir, {}, reopen=False)  # e.g. fpr-sweep eval
    parent = client.get_run(again.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/ok"] == 3.0
    assert again.find_trial_run("t7") == "t7" and again.run_id("t7") == run_id
    assert again.find_trial_run("nope") is None
    again.close()


def test_system_metrics_go_to_the_parent_run(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-system", sweep_dir, {})
    tr.start_system_metrics(interval_s=0.2)
    client = MlflowClient(uri)
    deadline = time.time() + 60
    while time.time() < deadline and not any(k.startswith("system/") for k in client.get_run(tr.parent_id).data.metrics):
        time.sleep(0.2)
    assert tr.end_sweep("FINISHED") is None
    metrics = client.get_run(tr.parent_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


# ---------------------------------------------------------------- the spool against a real server

def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_server_killed_and_restarted_loses_and_duplicates_nothing(tmp_path):
    """Writes while a real `mlflow server` is dead return at once; after a restart every point is
    in MLflow exactly once. A permanent outage ends with a message and the spool, which the next
    tracker (the next run) sends exactly once."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "server").start()
    try:
        tr = tracking.SweepTracker(server.uri, "outage", tmp_path / "sweep", {}, sweep_id="a1b2c3d4e5f6")
        handle = tr.trial_run("t1", "t1", {}, {"seed": 0})
        for step in range(1, 6):
            tr.log_metrics(handle, {"train/loss": 1.0 / step}, step)
        assert tr.flush(60)
        server.kill()
        worst = 0.0
        for step in range(6, 21):  # the server is down: every call returns without waiting on it
            started = time.perf_counter()
            tr.log_metrics(handle, {"train/loss": 1.0 / step}, step)
            tr.log_metrics(handle, {"train/loss": 9.9}, step)  # a step logged again is dropped
            worst = max(worst, time.perf_counter() - started)
        assert worst < 0.5
        assert not tr.flush(3) and tr.sender.down_since is not None
        server.start()
        assert tr.flush(120)
        client = MlflowClient(server.uri)
        run_id = tr.run_id(handle)
        assert _history(client, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 21)]

        tr.log_metrics(handle, {"train/loss": 0.01}, 21)
        server.kill()
        tr.end_trial("t1", "ok")
        message = tr.end_sweep("FINISHED", drain_s=2)  # a permanent outage
        assert message and server.uri in message and "spool" in message and "\n" not in message
        assert len(tr.spool.pending()) == 3

        server.start()
        again = tracking.SweepTracker(server.uri, "outage", tmp_path / "sweep", {}, sweep_id="a1b2c3d4e5f6")
        assert again.end_sweep("FINISHED") is None  # the next run sends the spool first
        assert _history(client, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 21)] + [(21, 0.01)]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not (tmp_path / "sweep" / "tracking" / "spool.jsonl").exists()  # compacted once sent
    finally:
        server.kill()


def test_two_folders_of_one_sweep_name_get_their_own_experiments(tmp_path):
    uri = store_address.default_tracking_uri(tmp_path)
    first = tracking.SweepTracker(uri, "same", tmp_path / "a", {}, sweep_id="aaaaaaaaaaaa")
    second = tracking.SweepTracker(uri, "same", tmp_path / "b", {}, sweep_id="bbbbbbbbbbbb")
    again = tracking.SweepTracker(uri, "same", tmp_path / "a", {}, sweep_id="aaaaaaaaaaaa")
    assert first.experiment_id != second.experiment_id and again.experiment_id == first.experiment_id
    assert again.parent_id == first.parent_id and second.parent_id != first.parent_id
    client = MlflowClient(uri)
    locations = {client.get_experiment(t.experiment_id).artifact_location for t in (first, second)}
    assert locations == {(tmp_path / d / "mlartifacts").resolve().as_uri() for d in "ab"}
    for t in (first, second, again):
        t.close()


def test_a_line_torn_by_a_crash_never_swallows_the_next_operation(tmp_path):
    from orchestrator.store.spool import Spool

    spool = Spool(tmp_path)
    spool.append({"op": "tags", "trial": "t1", "tags": {"a": "1"}})
    with open(spool.path, "a") as f:
        f.write('{"seq": 2, "op": "ta')  # a full disk or a kill mid-append
    again = Spool(tmp_path)
    again.append({"op": "tags", "trial": "t1", "tags": {"b": "2"}})
    assert [op["tags"] for op in Spool(tmp_path).pending()] == [{"a": "1"}, {"b": "2"}]


# ---------------------------------------------------------------- gathering reports into batches

def _count_metric_batches(tracker) -> list[int]:
    """Wrap the real client's log_batch to count the calls that carry metric points."""
    calls = []
    real = tracker.client.log_batch

    def counting(run_id, metrics=(), **kw):
        if metrics:
            calls.append(len(metrics))
        return real(run_id, metrics=metrics, **kw)

    tracker.client.log_batch = counting
    return calls


def test_reports_arriving_together_go_in_one_batch_per_trial_each_point_once(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-gather", sweep_dir, {})
    calls = _count_metric_batches(tr)
    handles = [tr.trial_run(t, t, {}, {"seed": 0}) for t in ("g1", "g2")]
    for step in range(12):  # two trials reporting side by side, faster than the sender gathers
        for k, handle in enumerate(handles):
            tr.log_metrics(handle, {"train/loss": 1.0 / (step + 1 + k), "train/acc": step / 12}, step * 25)
    assert tr.close() is None
    assert len(calls) <= 4, f"{len(calls)} metric batches for 24 reports of 2 trials"
    client = MlflowClient(uri)
    for k, handle in enumerate(handles):
        history = client.get_metric_history(tr.run_id(handle), "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(s * 25, 1.0 / (s + 1 + k)) for s in range(12)]


def test_a_report_the_store_refuses_costs_only_itself(store):
    sweep_dir, uri = store
    tr = tracking.SweepTracker(uri, "trk-refused", sweep_dir, {})
    handle = tr.trial_run("r1", "r1", {}, {"seed": 0})
    for step in range(6):
        tr.log_metrics(handle, {"train/loss": float(step)}, step)
        if step == 2:  # MLflow refuses metric names over 250 characters (a 4xx: never retried)
            tr.log_metrics(handle, {"x" * 300: 1.0}, step)
    assert tr.close() is None
    history = MlflowClient(uri).get_metric_history(tr.run_id(handle), "train/loss")
    assert sorted(m.step for m in history) == list(range(6))
    assert len(tr.warnings) == 1 and "refused metrics for r1" in tr.warnings[0]
