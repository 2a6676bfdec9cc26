"""Corrupt and foreign files in a sweep folder (issue 16, faults 4 and 5): real Parquet files, the
real CLI. A truncated trial file is quarantined with a warning and its trial counts as unfinished;
garbage in results.parquet is rebuilt from the trial files; a user's own *.parquet is never pooled;
no command ends in a traceback."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store import parquet
from orchestrator.sweep.layout import SweepDir
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.run import record
from orchestrator.sweep.expand import expand, resolve
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

runner = CliRunner()


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder as a run leaves it: spec.yaml, sweep.json, two finished trials, results.parquet."""
    path = write_spec(tmp_path, name="cf", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"train.lr": [0.001, 0.002, 0.003]})
    spec = load_spec(path)
    sweep_dir = tmp_path / "results" / "cf"
    sweep_dir.mkdir(parents=True)
    record.write_record(sweep_dir, spec, path.read_text(), path, "sqlite:///x.db", False, None)
    meta = SweepMeta("cf", spec.spec_hash(), "abc")
    trials = [resolve(c) for c in expand(spec)]
    for t in trials[:2]:
        rows = placeholder_rows(t, meta, "ok")
        for r in rows:
            r.update(exact_acc=0.5, n=8)
        parquet.write_trial_rows(sweep_dir, t.trial_id, rows)
    parquet.collect(sweep_dir)
    return sweep_dir, trials


def _invoke(*args):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    return result


def test_truncated_trial_file_is_quarantined_and_its_trial_runs_again(sweep):
    sweep_dir, trials = sweep
    broken = SweepDir.of(sweep_dir).trial_file(trials[0].trial_id)
    broken.write_bytes(broken.read_bytes()[:100])  # what a full disk or a crashed tool leaves
    status = _invoke("status", str(sweep_dir))
    assert status.exit_code == 0, status.output
    # status only reads (issue 33): the file is named and left where it is
    assert f"{broken} is unreadable" in status.output and "left in place" in status.output
    assert broken.exists() and not (sweep_dir / "trials" / ".corrupt").exists()
    row = next(line for line in status.output.splitlines() if trials[0].trial_id in line and "│" in line)
    assert "pending" in row and "1 ok, 2 pending" in status.output
    assert parquet.finished_statuses(sweep_dir) == {trials[1].trial_id: "ok"}  # the next run trains it again
    assert not broken.exists() and len(list((sweep_dir / "trials" / ".corrupt").iterdir())) == 1  # set aside


def test_garbage_results_table_is_rebuilt_and_report_works_from_trial_files(sweep):
    sweep_dir, trials = sweep
    (sweep_dir / "results.parquet").write_bytes(b"PAR1 not really parquet")
    report = _invoke("report", str(sweep_dir))
    assert report.exit_code == 0, report.output
    assert (sweep_dir / "results.parquet").read_bytes() == b"PAR1 not really parquet"  # report only reads
    assert parquet.read_results(sweep_dir).num_rows == 4  # a writer rebuilds it: 2 trials x 2 splits
    assert pq.read_table(sweep_dir / "results.parquet").num_rows == 4
    (sweep_dir / "results.parquet").unlink()  # as after a SIGTERM before the table was collected
    assert _invoke("report", str(sweep_dir)).exit_code == 0
    assert (sweep_dir / "report.md").exists()


def test_only_the_sweeps_own_files_are_read(sweep, capsys):
    sweep_dir, trials = sweep
    own = pd.read_parquet(sweep_dir / "results.parquet")
    own.to_parquet(sweep_dir / "my_export.parquet")  # a user's export saved in the folder
    pq.write_table(pq.read_table(sweep_dir / "results.parquet").replace_schema_metadata({}),
                   sweep_dir / "trials" / "zz_export.parquet")  # even under trials/, without our metadata
    (sweep_dir / "results.parquet").unlink()
    table = parquet.read_results(sweep_dir)
    assert table.num_rows == 4 and sorted(set(table.column("trial_id").to_pylist())) == sorted(
        t.trial_id for t in trials[:2])
    assert "zz_export.parquet was not written by this sweep" in capsys.readouterr().err
    report = _invoke("report", str(sweep_dir))
    assert report.exit_code == 0, report.output
    assert "seeds 2" not in (sweep_dir / "report.md").read_text()
