"""Trained models kept and re-evaluated, and the MLflow fields a researcher reads, end to end
through real Ray Tune, a real MLflow SQLite store, the real `mlflow server` REST API and real
Parquet files."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from fpr_core.config import ExperimentConfig
from fpr_core.experiment import evaluate_sizes
from fpr_core.saved_model import load_model, read_saved
from orchestrator.cli import app

from conftest import TINY_BASE, write_spec

pytestmark = pytest.mark.slow
TRAIN_STEPS = TINY_BASE["train"]["steps"]
runner = CliRunner()


def _children(client, exp_id):
    runs = client.search_runs([exp_id], max_results=100)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if "fpr.role" in r.data.tags][0]


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest_history(db: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` as a real `mlflow server` on the store answers metrics/get-history."""
    port = _free_port()
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
        with urllib.request.urlopen(f"{base}/metrics/get-history?{query}", timeout=30) as resp:
            metrics = json.loads(resp.read())["metrics"]
        return sorted((int(m["step"]), m["value"]) for m in metrics)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def test_models_kept_series_fields_and_eval_on_new_sizes(spec_dir, ray_session):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "ema": 0.9}}
    path = write_spec(spec_dir, name="keep", description="Does recall help at twice the length?", base=base,
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"model.recall": ["none", "standard"]})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "models:  2 kept in" in result.output
    sweep_dir = spec_dir / "results" / "keep"
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("keep")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == "Does recall help at twice the length?"
    children, parent = _children(client, exp.experiment_id)
    assert parent.data.tags["mlflow.note.content"] == "Does recall help at twice the length?"
    for tag in ("mlflow.source.git.commit", "mlflow.source.name", "mlflow.user"):
        assert parent.data.tags[tag] and all(c.data.tags[tag] == parent.data.tags[tag] for c in children)
    assert parent.data.metrics["trials/ok"] == 2 and 0 <= parent.data.metrics["best_ood_acc/prefix_sums"] <= 1
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"spec.yaml", "results.parquet"}

    df = pd.read_parquet(sweep_dir / "results.parquet")
    for child in children:
        run_id, tid = child.info.run_id, child.data.tags["trial_id"]
        mine = df[df.trial_id == tid].set_index("split")
        # one point per evaluated size at step = size, the flat keys still there
        assert _history(client, run_id, "by_size/exact_acc") == [(8, mine.exact_acc["id"]), (16, mine.exact_acc["ood_16"])]
        assert [s for s, _ in _history(client, run_id, "by_size/iters_mean")] == [8, 16]
        assert child.data.metrics["acc/ood_16"] == mine.exact_acc["ood_16"]
        for split in ("id", "ood_16"):  # the test-time compute curve, step = loop budget
            assert _history(client, run_id, f"by_loop_budget/exact_acc/{split}") == list(zip(
                (int(b) for b in mine.budget_iters[split]), mine.budget_acc[split]))
        assert child.data.tags["mlflow.note.content"].startswith("prefix_sums trained at size 8, evaluated at 8 (id)")
        datasets = {d.dataset.name: json.loads(d.dataset.profile) for d in child.inputs.dataset_inputs}
        assert set(datasets) == {"prefix_sums/train", "prefix_sums/id", "prefix_sums/ood_16"}
        assert datasets["prefix_sums/train"]["instances"] == 64 and datasets["prefix_sums/id"]["seed"] == 0
        assert datasets["prefix_sums/ood_16"]["generator_version"] == "1"
        # the weights artifact loads in one call and reproduces the recorded accuracy
        assert [a.path for a in client.list_artifacts(run_id, "weights")] == [f"weights/{tid}.pt"]
        local = client.download_artifacts(run_id, f"weights/{tid}.pt", str(spec_dir))
        saved = read_saved(local)
        assert saved.ema is not None and saved.meta["trial_id"] == tid
        assert child.data.metrics["model/weights_bytes"] == (sweep_dir / "models" / f"{tid}.pt").stat().st_size
        (output,) = client.get_run(run_id).outputs.model_outputs  # the run's Models field
        logged = client.get_logged_model(output.model_id)
        assert logged.source_run_id == run_id and logged.status == "READY" and logged.name == f"prefix_sums-{tid}"
        assert logged.tags["weights"] == f"runs:/{run_id}/weights/{tid}.pt" and logged.params["train.ema"] == "0.9"
        cfg = ExperimentConfig.from_dict(saved.config)
        (ev,), _ = evaluate_sizes(load_model(local), cfg, (), include_id=True)
        assert ev.metrics["exact_acc"] == mine.exact_acc["id"]
        assert ev.result.instance_correct.tolist() == list(mine.instance_correct["id"])

    train_loss = {c.info.run_id: _history(client, c.info.run_id, "train/loss") for c in children}
    tune_files = sorted(p.relative_to(sweep_dir) for p in (sweep_dir / "tune").rglob("*"))
    started = time.perf_counter()
    first = runner.invoke(app, ["eval", str(sweep_dir), "--sizes", "12,16"])
    eval_seconds = time.perf_counter() - started
    assert first.exit_code == 0, first.output
    df2 = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df2) == len(df) + 2 and sorted(df2[df2.split == "ood_12"].trial_id) == sorted(df.trial_id.unique())
    new = df2[df2.split == "ood_12"]
    assert (new.status == "ok").all() and (new["size"] == 12).all() and (new.n == 8).all()
    assert (new.eval_cap == 12).all()  # eval_cap 8 x 12 / 8, as the trials' own cap law says
    old16 = df.set_index(["trial_id", "split"]).exact_acc
    assert all(old16[(t, "ood_16")] == a for t, a in zip(df2[df2.split == "ood_16"].trial_id,
                                                          df2[df2.split == "ood_16"].exact_acc))  # 16 kept
    for child in children:
        run_id = child.info.run_id
        acc12 = new.set_index("trial_id").exact_acc[child.data.tags["trial_id"]]
        assert [s for s, _ in _history(client, run_id, "by_size/exact_acc")] == [8, 12, 16]
        assert client.get_run(run_id).data.metrics["acc/ood_12"] == acc12
        assert _history(client, run_id, "train/loss") == train_loss[run_id]  # no training step
        assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(p.relative_to(sweep_dir) for p in (sweep_dir / "tune").rglob("*")) == tune_files
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    second = runner.invoke(app, ["eval", str(sweep_dir), "--sizes", "12"])
    assert second.exit_code == 0 and "nothing to evaluate" in second.output
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == len(df2)
    assert [s for s, _ in _history(client, children[0].info.run_id, "by_size/exact_acc")] == [8, 12, 16]
    print(f"eval of 2 trials at one new size: {eval_seconds:.1f} s")

    tid = children[0].data.tags["trial_id"]
    forced = runner.invoke(app, ["eval", str(sweep_dir), "--sizes", "12", "--trials", tid, "--force"])
    assert forced.exit_code == 0 and "evaluated 1 trials" in forced.output, forced.output
    df3 = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df3) == len(df2)  # the ood_12 row of that trial replaced, not duplicated
    again = df3[(df3.trial_id == tid) & (df3.split == "ood_12")]
    before = df2[(df2.trial_id == tid) & (df2.split == "ood_12")]
    assert again.finished_at.iloc[0] > before.finished_at.iloc[0]
    assert again.exact_acc.iloc[0] == before.exact_acc.iloc[0]  # deterministic re-evaluation
    forced_run = children[0].info.run_id
    assert [s for s, _ in _history(client, forced_run, "acc/ood_12")] == [0, 0]  # a newer point, at the single-value step
    assert [s for s, _ in _history(client, forced_run, "by_size/exact_acc")] == [8, 12, 12, 16]

    fewer = runner.invoke(app, ["eval", str(sweep_dir), "--sizes", "20", "--trials", tid, "--n-eval", "5"])
    assert fewer.exit_code == 0 and "evaluated 1 trials" in fewer.output, fewer.output
    df4 = pd.read_parquet(sweep_dir / "results.parquet")
    assert df4[(df4.trial_id == tid) & (df4.split == "ood_20")].n.tolist() == [5]
    assert df4[(df4.trial_id == tid) & (df4.split == "ood_12")].n.tolist() == before.n.tolist()

    report = runner.invoke(app, ["report", str(sweep_dir)])
    assert report.exit_code == 0, report.output
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "report.md" in names and [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]

    rest = _rest_history(uri, children[1].info.run_id, "by_size/exact_acc")
    assert [s for s, _ in rest] == [8, 12, 16]


def test_keep_models_none_and_bad_eval_input(spec_dir, ray_session):
    path = write_spec(spec_dir, name="nokeep", keep_models="none",
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    sweep_dir = spec_dir / "results" / "nokeep"
    assert not (sweep_dir / "models").exists()
    out = runner.invoke(app, ["eval", str(sweep_dir), "--sizes", "12"])
    assert out.exit_code == 0 and "no saved model" in out.output and "nothing to evaluate" in out.output
    for args, message in [(["--sizes", "12,x"], "--sizes"), (["--sizes", "12", "--cap-law", "cubic"], "--cap-law"),
                          (["--sizes", "12", "--trials", "nope"], "--trials")]:
        bad = runner.invoke(app, ["eval", str(sweep_dir), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
