"""Parquet results: fixed schema, atomic per-trial files, one collected table readable everywhere."""
from __future__ import annotations

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from orchestrator.store import parquet
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.expand import expand, resolve
from orchestrator.store.rows import SweepMeta, placeholder_rows
from orchestrator.store.schema import SCHEMA_VERSION, config_columns, results_schema
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

META = SweepMeta("rs", "abc123", "deadbeef")


@pytest.fixture
def trials(spec_dir):
    path = write_spec(spec_dir, name="rs", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16, 32]}],
                      axes={"model.recall": ["none", "standard"]})
    return [resolve(c) for c in expand(load_spec(path))]


def _ok_rows(trial, acc):
    rows = placeholder_rows(trial, META, "ok")
    for r in rows:
        r.update(exact_acc=acc, n=8, instance_iters=[1.0, 2.0], instance_correct=[True, False],
                 hostname="h", device="cpu", versions='{"torch": "x"}')
    return rows


def test_trial_file_is_written_atomically_with_the_schema(tmp_path, trials):
    path = parquet.write_trial_rows(tmp_path, trials[0].trial_id, _ok_rows(trials[0], 0.5))
    assert path == tmp_path / "trials" / f"{trials[0].trial_id}.parquet"
    assert [p.name for p in (tmp_path / "trials").iterdir()] == [path.name]  # no temp files left
    table = pq.read_table(path)
    assert table.schema.equals(results_schema(), check_metadata=False)
    assert table.schema.metadata[b"fpr_sweep.schema_version"] == SCHEMA_VERSION.encode()
    assert table.column("split").to_pylist() == ["id", "ood_16", "ood_32"]
    assert table.column("size").to_pylist() == [8, 16, 32]
    assert table.column("cfg.model.recall").to_pylist() == ["none"] * 3


def test_rewrite_replaces_rows_instead_of_appending(tmp_path, trials):
    t = trials[0]
    parquet.write_trial_rows(tmp_path, t.trial_id, placeholder_rows(t, META, "failed", "boom"))
    assert parquet.finished_statuses(tmp_path) == {t.trial_id: "failed"}
    parquet.write_trial_rows(tmp_path, t.trial_id, _ok_rows(t, 1.0))
    assert parquet.finished_statuses(tmp_path) == {t.trial_id: "ok"}
    assert parquet.read_trial(tmp_path, t.trial_id).num_rows == 3


def test_unknown_columns_are_rejected(tmp_path, trials):
    rows = _ok_rows(trials[0], 0.5)
    rows[0]["not_a_column"] = 1
    with pytest.raises(ValueError, match="not_a_column"):
        parquet.write_trial_rows(tmp_path, trials[0].trial_id, rows)


def test_collect_gives_one_row_per_trial_and_split_for_every_reader(tmp_path, trials):
    assert parquet.collect(tmp_path) is None
    parquet.write_trial_rows(tmp_path, trials[0].trial_id, _ok_rows(trials[0], 0.25))
    parquet.write_trial_rows(tmp_path, trials[1].trial_id, placeholder_rows(trials[1], META, "failed", "boom"))
    (tmp_path / "trials" / ".half-written.parquet.tmp").write_bytes(b"partial")  # a crashed writer
    path = parquet.collect(tmp_path)
    parquet.collect(tmp_path)  # idempotent: collecting again never duplicates rows
    df = pd.read_parquet(path)
    assert len(df) == 6 and not df.duplicated(["trial_id", "split"]).any()
    assert set(config_columns()) <= set(df.columns)
    assert pl.read_parquet(path).height == 6
    n_ok = duckdb.sql(f"select count(*) from '{path}' where status = 'ok'").fetchall()[0][0]
    assert n_ok == 3
    failed = df[df.status == "failed"]
    assert set(failed.error) == {"boom"} and failed.exact_acc.isna().all()
    acc = {(r["variant"], r["split"]): r["exact_acc"] for r in parquet.accuracy_table(tmp_path)}
    assert acc == {("recall=none", "id"): 0.25, ("recall=none", "ood_16"): 0.25, ("recall=none", "ood_32"): 0.25}


def test_older_files_missing_a_column_are_conformed(tmp_path, trials):
    t = trials[0]
    table = parquet.rows_table(_ok_rows(t, 0.5)).drop_columns(["node_id"])
    (tmp_path / "trials").mkdir()
    pq.write_table(table, tmp_path / "trials" / f"{t.trial_id}.parquet")
    out = pq.read_table(parquet.collect(tmp_path))
    assert "node_id" in out.column_names and out.column("node_id").null_count == 3


def test_diverged_trial_gives_diverged_rows_for_every_split(trials):
    from fpr_core.config import ModelConfig
    from fpr_core.experiment import ExperimentResult
    from fpr_core.train import TrainResult
    from orchestrator.store.rows import experiment_rows

    t = trials[0]
    train = TrainResult("diverged", 7, 0.5, float("nan"), "non-finite loss nan at step 7")
    result = ExperimentResult(train, [], ModelConfig(), 8, "length", "cpu")
    rows = experiment_rows(t, META, result, {"hostname": "h", "node_id": "n", "versions": "{}"})
    assert [r["split"] for r in rows] == ["id", "ood_16", "ood_32"]
    assert {r["status"] for r in rows} == {"diverged"} and rows[0]["error"] == train.message
    assert rows[0]["train_steps"] == 7 and rows[0]["final_loss"] is None
    table = parquet.rows_table(rows)
    assert table.column("exact_acc").null_count == 3


def _many_trials(sweep, n):
    """n trial files of three tasks x two variants, seeds counting up, some failed."""
    ids = []
    for k in range(n):
        tid = f"t{(k * 7919) % 1000:04d}"  # written out of order
        rows = [{"sweep": "s", "trial_id": tid, "task": ("mazes", "prefix_sums", "sudoku")[k % 3],
                 "variant": f"recall={('none', 'standard')[k % 2]}", "seed": k // 6, "split": split, "size": size,
                 "status": "failed" if k % 5 == 0 else "ok", "exact_acc": k / n, "instance_iters": [float(k)] * (k % 4)}
                for split, size in (("id", 8), ("ood_16", 16), ("ood_32", 32))]
        parquet.write_trial_rows(sweep, tid, rows)
        ids.append(tid)
    return ids


def test_compacted_fragments_collect_to_the_same_sorted_table(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "MERGE_CHUNK_ROWS", 7)  # many chunks, runs split across them
    monkeypatch.setattr(parquet, "FRAGMENT_ROW_GROUP", 5)
    ids = _many_trials(tmp_path, 60)
    everything = pd.concat([pd.read_parquet(p) for p in parquet.trial_files(tmp_path)])
    expected = everything.sort_values(["task", "variant", "seed", "trial_id", "size"]).reset_index(drop=True)
    statuses = parquet.finished_statuses(tmp_path)
    parquet.compact(tmp_path, ids[:25])
    parquet.compact(tmp_path, ids[25:50])
    assert len(parquet.fragment_files(tmp_path)) == 2 and len(parquet.trial_files(tmp_path)) == 10
    got = pd.read_parquet(parquet.collect(tmp_path))
    pd.testing.assert_frame_equal(got, expected, check_like=False)
    assert parquet.finished_statuses(tmp_path) == statuses
    assert parquet.read_trial(tmp_path, ids[3]).num_rows == 3  # compacted: read from its fragment
    assert len(parquet.trial_summaries(tmp_path)) == 60


def test_a_trial_left_in_both_a_fragment_and_its_file_counts_once(tmp_path):
    ids = _many_trials(tmp_path, 12)
    keep = SweepDir(tmp_path).trial_file(ids[0]).read_bytes()
    parquet.compact(tmp_path, ids[:6])
    SweepDir(tmp_path).trial_file(ids[0]).write_bytes(keep)  # as if killed before deleting it
    df = pd.read_parquet(parquet.collect(tmp_path))
    assert len(df) == 36 and not df.duplicated(["trial_id", "split"]).any()
    assert len(parquet.finished_statuses(tmp_path)) == 12


def test_many_loose_files_are_sorted_in_bounded_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "COMPACT_EVERY", 8)  # 30 loose files -> 4 temporary sorted runs
    _many_trials(tmp_path, 30)
    expected = pd.concat([pd.read_parquet(p) for p in parquet.trial_files(tmp_path)])
    expected = expected.sort_values(["task", "variant", "seed", "trial_id", "size"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet.collect(tmp_path)), expected)


def test_a_compacted_trial_rewritten_later_reads_its_new_rows(tmp_path):
    ids = _many_trials(tmp_path, 12)
    parquet.compact(tmp_path, ids)
    rows = parquet.read_trial(tmp_path, ids[4]).to_pylist()
    rows.append(dict(rows[-1], split="ood_64", size=64))  # e.g. `fpr-sweep eval` adding a size
    parquet.write_trial_rows(tmp_path, ids[4], rows)
    df = pd.read_parquet(parquet.collect(tmp_path))
    assert len(df) == 37 and sorted(df[df.trial_id == ids[4]]["size"]) == [8, 16, 32, 64]
    assert len(parquet.trial_summaries(tmp_path)) == 12

def test_unmeasured_integer_metrics_are_null_not_an_error():
    """eval.diagnostics: false leaves probe counts NaN; the row holds null (cpu_profiles --smoke failed here)."""
    import dataclasses

    from fpr_core.evaluate import EvalResult
    from fpr_core.experiment import SplitResult
    from orchestrator.store.rows import split_fields
    from orchestrator.sweep.columns import columns

    INT_ROW_COLUMNS = [c.name for c in columns("metric") if c.kind == "int"]
    arrays = {f.name: [] for f in dataclasses.fields(EvalResult) if f.name != "metrics"}
    split = SplitResult("id", 8, EvalResult({k: float("nan") for k in INT_ROW_COLUMNS}, **arrays))
    fields = split_fields(split)
    assert all(fields[k] is None for k in INT_ROW_COLUMNS)
    split.result.metrics = {k: 3.0 for k in INT_ROW_COLUMNS}
    fields = split_fields(split)
    assert all(fields[k] == 3 and isinstance(fields[k], int) for k in INT_ROW_COLUMNS)
