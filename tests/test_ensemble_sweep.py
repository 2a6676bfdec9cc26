"""``seeds_per_trial`` end to end through real Ray Tune, a real MLflow SQLite store and real Parquet
files: seeds trained together stay trials of their own everywhere (orchestrator/run/members.py)."""
from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.expand import expand
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_seeds_trained_together_keep_their_trial_ids_rows_runs_and_models(spec_dir, ray_session):
    path = write_spec(spec_dir, name="members", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"model.recall": ["none", "standard"]}, seeds=[0, 1, 2], seeds_per_trial=2)
    ids = {c.cell_id: c.seed for c in expand(load_spec(path))}  # the trial ids of seeds_per_trial: 1
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    sweep_dir = spec_dir / "results" / "members"
    # 2 arms x 3 seeds in groups of 2: 4 Tune trials, named after their first member
    assert len(list((sweep_dir / "tune").glob("grid-*/prefix_sums-*"))) == 4
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(df.trial_id) == set(ids) and len(df) == 6 * 2 and (df.status == "ok").all()
    assert all(ids[t] == s for t, s in zip(df.trial_id, df.seed))
    assert {p.stem for p in (sweep_dir / "models").glob("*.pt")} == set(ids)

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("members")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(ids)
    for child in children:  # each seed's own training curve and final metrics
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")] == [5, 10]
        row = df[(df.trial_id == child.data.tags["trial_id"]) & (df.split == "id")].iloc[0]
        assert child.data.metrics["acc/id"] == pytest.approx(row.exact_acc)
    status = runner.invoke(app, ["status", str(sweep_dir)])
    assert status.exit_code == 0 and "6 ok" in status.output

    # one member's rows file lost: the rerun restores that member's rows from Tune's record of its
    # group without training again (train_seconds and every metric are the first run's)
    lost = df[df.seed == 1].trial_id.iloc[0]
    (sweep_dir / "trials" / f"{lost}.parquet").unlink()
    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    df2 = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(df2.trial_id) == set(ids) and len(df2) == 12
    pd.testing.assert_frame_equal(df2[df2.trial_id == lost].drop(columns="finished_at").reset_index(drop=True),
                                  df[df.trial_id == lost].drop(columns="finished_at").reset_index(drop=True))



def test_a_group_that_raises_fails_each_of_its_seeds(spec_dir, ray_session):
    # train_size 3 has only 8 distinct bit strings: the 'id' split cannot be filled and the trial raises
    path = write_spec(spec_dir, name="members-fail", tasks=[{"name": "prefix_sums", "train_size": 3, "ood_sizes": []}],
                      seeds=[0, 1], seeds_per_trial=2, max_failures=0)
    ids = {c.cell_id for c in expand(load_spec(path))}
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    sweep_dir = spec_dir / "results" / "members-fail"
    assert len(list((sweep_dir / "tune").glob("grid-*/prefix_sums-*"))) == 1  # one Tune trial for both seeds
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert set(df.trial_id) == ids and (df.status == "failed").all()
    assert df.error.str.contains("instance space is too small").all()
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("members-fail")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(ids)
    assert all(c.info.status == "FAILED" for c in children)
