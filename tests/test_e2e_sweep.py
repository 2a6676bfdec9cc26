"""End to end through real Ray Tune, a real MLflow SQLite store and real Parquet files."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store.schema import results_schema

from conftest import write_spec

pytestmark = pytest.mark.slow
runner = CliRunner()


def _runs(sweep_dir, name):
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fpr.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_grid_sweep_writes_rows_runs_and_failures(spec_dir, ray_session):
    # train_size 3 has only 8 distinct bit strings: the 'id' split cannot be filled, so fpr_core
    # raises inside the trial; Tune retries it (max_failures) and the driver records 'failed' rows.
    path = write_spec(spec_dir, name="e2e", max_failures=1, tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]},
        {"name": "prefix_sums", "train_size": 3, "ood_sizes": []}],
        axes={"model.recall": ["none", "standard"]})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output  # some trials failed
    sweep_dir = spec_dir / "results" / "e2e"
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert list(df.columns) == results_schema().names
    assert len(df) == 2 * 2 + 2 * 1 and not df.duplicated(["trial_id", "split"]).any()
    ok, failed = df[df.status == "ok"], df[df.status == "failed"]
    assert sorted(ok.split) == ["id", "id", "ood_16", "ood_16"] and ok.trial_id.nunique() == 2
    assert failed.error.str.contains("instance space is too small").all() and failed.trial_id.nunique() == 2
    assert ok.exact_acc.between(0, 1).all() and (ok.n == 8).all()
    assert ok.eval_cap.tolist() == [8, 16, 8, 16]  # the OOD loop cap grows with size
    for col in ("git_commit", "versions", "hostname", "node_id", "device", "spec_hash", "finished_at"):
        assert ok[col].notna().all(), col
    assert "torch" in json.loads(ok.versions.iloc[0])
    assert (df.seed == 0).all() and set(df["cfg.model.recall"]) == {"none", "standard"}
    assert all(len(x) == 8 for x in ok.instance_iters)

    client, parents, children = _runs(sweep_dir, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert len(children) == 4 and len({c.data.tags["trial_id"] for c in children}) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        if child.data.tags["trial_id"] in set(ok.trial_id):
            assert child.info.status == "FINISHED"
            assert {"acc/id", "acc/ood_16", "iters_mean/ood_16", "iters_p95/id", "reachability/id",
                    "probe_verified/id"} <= set(child.data.metrics)
            # rho(dF/dz) exists only at verified fixed points (the untrained no-recall trial, with
            # FPRM's outer_only scaling, does not reach one in 8 steps): logged exactly when measured
            row = ok[(ok.trial_id == child.data.tags["trial_id"]) & (ok.split == "id")].iloc[0]
            assert ("spectral_radius/id" in child.data.metrics) == bool(pd.notna(row.spectral_radius))
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
            assert steps == [5, 10]
            assert child.data.params["model.recall"] in ("none", "standard")
            assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"config.json", "convergence.png", "weights"}
        else:
            assert child.info.status == "FAILED" and "too small" in child.data.tags["error"]

    assert ok[ok["cfg.model.recall"] == "standard"].spectral_radius.notna().all()
    status = runner.invoke(app, ["status", str(sweep_dir)])
    assert status.exit_code == 0 and "2 failed, 2 ok" in status.output

    # the report builds from this real (partly failed) sweep and says what is missing
    report = runner.invoke(app, ["report", str(sweep_dir)])
    assert report.exit_code == 0, report.output
    text = (sweep_dir / "report.md").read_text()
    assert "| failed | 2 |" in text and "status failed: ValueError: make_splits" in text
    plots = list(sweep_dir.glob("prefix_sums*_ood_accuracy.png"))
    assert "recall=standard" in text and plots and all(p.stat().st_size > 1000 for p in plots)


def test_search_sweep_with_asha(spec_dir, ray_session):
    path = write_spec(spec_dir, name="search", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      search={"num_samples": 3, "metric": "acc/ood_16", "mode": "max",
                              "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
                      scheduler={"type": "asha", "metric": "train/loss", "mode": "min", "grace_period": 5,
                                 "reduction_factor": 2}, max_concurrent=2)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(spec_dir / "results" / "search" / "results.parquet")
    assert df.trial_id.nunique() == 3 and len(df) == 3 * 2
    assert df["cfg.train.lr"].nunique() == 3  # three different sampled learning rates
    assert set(df.status) <= {"ok", "stopped"} and "ok" in set(df.status)
    _, parents, children = _runs(spec_dir / "results" / "search", "search")
    assert len(parents) == 1 and len(children) == 3


def test_gpu_request_without_gpus_fails_fast(spec_dir, ray_session):
    path = write_spec(spec_dir, name="gpu", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      resources={"cpu": 1, "gpu": 1})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "resources.gpu" in result.output and "has 0" in result.output


def test_unreachable_tracking_server_is_bad_input(spec_dir):
    path = write_spec(spec_dir, name="trk", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    result = runner.invoke(app, ["run", str(path), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "not reachable" in result.output
    assert not (spec_dir / "results" / "trk").exists()  # nothing started
