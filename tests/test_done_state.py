"""One notion of a finished trial (issue 32 item 4): `status`, `run --dry-run`, `run` and `report`
all read it from ``store.parquet.finished_statuses`` and the tables behind it, including in a
folder that holds results.parquet alone (a study committed or copied without its trials/ folder).
Real Parquet files, the real CLI."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store import parquet
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.run import record
from orchestrator.sweep.expand import expand, resolve
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

runner = CliRunner()


@pytest.fixture
def table_only(tmp_path):
    """A finished 3-trial sweep, then a copy of it holding only spec.yaml, sweep.json and
    results.parquet (as results/ood_generalization_cpu is committed)."""
    spec_path = write_spec(tmp_path, name="done", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                           axes={"train.lr": [0.001, 0.002, 0.003]})
    spec = load_spec(spec_path)
    original = tmp_path / "results" / "done"
    original.mkdir(parents=True)
    record.write_record(original, spec, spec_path.read_text(), spec_path, "sqlite:///x.db", False, None)
    meta = SweepMeta("done", spec.spec_hash(), "abc")
    trials = [resolve(c) for c in expand(spec)]
    for t, status in zip(trials, ["ok", "ok", "diverged"]):
        rows = placeholder_rows(t, meta, status)
        for r in rows:
            r.update(exact_acc=0.5, n=8)
        parquet.write_trial_rows(original, t.trial_id, rows)
    parquet.collect(original)
    copy = tmp_path / "copy" / "done"
    copy.mkdir(parents=True)
    for name in ("spec.yaml", "sweep.json", "results.parquet"):
        shutil.copy2(original / name, copy / name)
    return spec_path, copy, trials


def test_a_folder_with_only_results_parquet_reads_the_same_everywhere(table_only):
    spec_path, copy, trials = table_only
    expected = {trials[0].trial_id: "ok", trials[1].trial_id: "ok", trials[2].trial_id: "diverged"}
    with parquet.read_only():
        assert parquet.finished_statuses(copy) == expected
        assert set(parquet.read_current(copy).column("trial_id").to_pylist()) == set(expected)
    status = runner.invoke(app, ["status", str(copy)])
    assert status.exit_code == 0, status.output
    assert status.output.strip().splitlines()[-1] == "1 diverged, 2 ok"  # was "3 pending"
    dry = runner.invoke(app, ["run", str(spec_path), "--dry-run", "--results-dir", str(copy.parent)])
    assert dry.exit_code == 0, dry.output
    for t in trials:  # the `done` column of each trial's row
        row = next(line for line in dry.output.splitlines() if t.trial_id in line)
        assert expected[t.trial_id] in row, row
    assert "3 of them finished" in dry.output
    assert list(copy.iterdir()) and sorted(p.name for p in copy.iterdir()) == [
        "results.parquet", "spec.yaml", "sweep.json"]  # read-only commands wrote nothing


def test_the_first_write_keeps_the_tables_trials(table_only):
    """A trial file written into such a folder (a resumed run, `eval`) would make the trial files
    the record, dropping the table's trials: the table is adopted as a fragment first."""
    _, copy, trials = table_only
    before = pq.read_table(copy / "results.parquet")
    rows = placeholder_rows(trials[2], SweepMeta("done", "h", "abc"), "ok")  # trial 3 trained again, now ok
    parquet.write_trial_rows(copy, trials[2].trial_id, rows)
    assert parquet.finished_statuses(copy) == {trials[0].trial_id: "ok", trials[1].trial_id: "ok",
                                               trials[2].trial_id: "ok"}
    after = pq.read_table(parquet.collect(copy))
    assert after.num_rows == before.num_rows
    kept = [r["exact_acc"] for r in after.to_pylist() if r["trial_id"] == trials[0].trial_id]
    assert kept == [0.5, 0.5]


def test_run_and_report_on_a_table_only_folder_train_nothing_and_read_every_trial(table_only):
    spec_path, copy, trials = table_only
    run = runner.invoke(app, ["run", str(spec_path), "--results-dir", str(copy.parent)])
    assert run.exit_code == 0, run.output
    assert "trials: 1 diverged, 2 ok" in run.output and "unfinished" not in run.output
    assert not (copy / "trials").exists()  # nothing trained
    report = runner.invoke(app, ["report", str(copy)])
    assert report.exit_code == 0, report.output
    text = (copy / "report.md").read_text()
    assert "| total | 3 |" in text and "| diverged | 1 |" in text, text
