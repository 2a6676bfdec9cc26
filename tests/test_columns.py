"""One declaration per result column (orchestrator/sweep/columns.py): the schema, the rows, the
MLflow keys and fpr_core's evaluation agree with it; config columns keep their types, and tables
written when they were text (schema <= 3) read back typed."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fpr_core.config import EvalConfig, ModelConfig
from fpr_core.evaluate import METRIC_KEYS, EvalResult
from fpr_core.split_names import eval_split_names, parse_split, split_name
from orchestrator.report.frame import load_results, prepare
from orchestrator.store import parquet
from orchestrator.store.rows import config_cells
from orchestrator.store.schema import TEXT_CONFIG_VERSIONS, results_schema
from orchestrator.sweep import metrics
from orchestrator.sweep.columns import COLUMNS, columns, config_kind, config_kinds


def test_metric_columns_are_what_fpr_core_evaluates():
    written = {c.name for c in columns("metric") if not c.legacy}
    assert written == set(METRIC_KEYS)


def test_instance_columns_are_eval_result_arrays():
    arrays = {f.name for f in dataclasses.fields(EvalResult)} - {"metrics", "residual_curve"}
    assert {c.name for c in columns("instance")} == arrays


def test_schema_and_metric_keys_come_from_the_table():
    schema = results_schema()
    assert schema.names[:len(COLUMNS)] == [c.name for c in COLUMNS]
    assert set(metrics.SPLIT_METRIC_NAMES) <= {c.name for c in columns("metric")}
    assert metrics.split_metric("exact_acc", split_name(64)) == "acc/ood_64"
    assert metrics.DEFAULT_SEARCH_METRIC == "acc/id"


def test_split_names_build_and_parse_one_way():
    assert eval_split_names((16, 32)) == ["id", "ood_16", "ood_32"]
    assert [parse_split(s, 8) for s in eval_split_names((16, 32))] == [8, 16, 32]
    with pytest.raises(ValueError, match="ood_<size>"):
        parse_split("ood_x", 8)


def test_config_columns_take_their_dataclass_types():
    kinds = config_kinds()
    assert kinds["cfg.model.spectral"] == "float" and kinds["cfg.model.dim"] == "int"
    assert kinds["cfg.model.recall"] == "str" and kinds["cfg.model.causal"] == "bool"
    assert kinds["cfg.eval.halting"] == "strs" and kinds["cfg.eval.protocols"] == "str"  # a mapping: its str()
    assert config_kind(dict) is None
    cells = config_cells({"model": dataclasses.asdict(ModelConfig(spectral=1)),
                          "eval": dataclasses.asdict(EvalConfig(protocols={"strict": {"tol": 0.001}}))})
    assert cells["cfg.model.spectral"] == 1.0 and isinstance(cells["cfg.model.spectral"], float)
    assert cells["cfg.eval.halting"] == ["trained"] and cells["cfg.eval.protocols"] == "{'strict': {'tol': 0.001}}"
    schema = results_schema()
    assert schema.field("cfg.model.spectral").type == pa.float64()
    assert schema.field("cfg.eval.halting").type == pa.list_(pa.string())


def _text_table(rows: list[dict], version: bytes = b"3") -> pa.Table:
    """``rows`` as a schema <= 3 file held them: every config column the str() of its value."""
    schema = results_schema()
    text = pa.schema([pa.field(f.name, pa.string()) if f.name.startswith("cfg.") else f for f in schema])
    rows = [{k: (None if v is None else str(v)) if k.startswith("cfg.") else v for k, v in r.items()} for r in rows]
    return pa.Table.from_pylist(rows, schema=text).replace_schema_metadata({b"fpr_sweep.schema_version": version})


def test_text_config_columns_of_older_tables_read_back_typed(tmp_path):
    from test_report import make_rows

    assert TEXT_CONFIG_VERSIONS == ("1", "2", "3")
    rows = make_rows(tasks=("prefix_sums",), recalls=("none", "standard"), norms=("rms",), seeds=(0, 1))
    for r in rows:
        r.update({"cfg.eval.halting": ["trained", "long"], "cfg.model.causal": False, "cfg.train.lr": 1e-05})
    typed, old = tmp_path / "typed", tmp_path / "old"
    for folder, table in ((typed, pa.Table.from_pylist(rows, schema=results_schema())), (old, _text_table(rows))):
        folder.mkdir()
        pq.write_table(table, folder / "results.parquet")
    with parquet.read_only():
        new_table, old_table = parquet.read_current(typed), parquet.read_current(old)
    assert old_table.schema.equals(results_schema(), check_metadata=False)
    assert old_table.column("cfg.model.spectral").to_pylist() == new_table.column("cfg.model.spectral").to_pylist()
    assert old_table.column("cfg.eval.halting").to_pylist()[0] == ["trained", "long"]
    assert old_table.column("cfg.train.lr").to_pylist()[0] == 1e-05
    assert old_table.column("cfg.model.causal").to_pylist()[0] is False
    a, b = prepare(load_results(typed)), prepare(load_results(old))
    assert a.variant_label.tolist() == b.variant_label.tolist()
    assert set(a.variant_label) == {"recall=none, outer_norm=rms, spectral=0.5 (contractive)",
                                    "recall=none, outer_norm=rms, spectral=2 (expansive)",
                                    "recall=none, outer_norm=rms, spectral=unnormalised",
                                    "recall=standard, outer_norm=rms, spectral=0.5 (contractive)",
                                    "recall=standard, outer_norm=rms, spectral=2 (expansive)",
                                    "recall=standard, outer_norm=rms, spectral=unnormalised"}


def test_old_trial_files_and_fragments_scan_typed(tmp_path):
    """A sweep folder of schema-3 trial files and fragments (text config columns the one-pass scan
    cannot cast to lists) reads through the per-file path, typed."""
    from test_report import make_rows

    rows = make_rows(tasks=("prefix_sums",), recalls=("none",), norms=("rms",), spectrals=(0.5,), seeds=(0, 1))
    (tmp_path / "trials").mkdir()
    for tid in {r["trial_id"] for r in rows}:
        table = _text_table([dict(r, **{"cfg.eval.halting": ["trained"]}) for r in rows if r["trial_id"] == tid])
        meta = {**table.schema.metadata, b"fpr_sweep.trial_id": tid.encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp_path / "trials" / f"{tid}.parquet")
    table = parquet.read_results(tmp_path)
    assert table.num_rows == len(rows) and table.column("cfg.eval.halting").to_pylist()[0] == ["trained"]
    assert set(table.column("cfg.model.spectral").to_pylist()) == {0.5}
    # a fragment an older sweep compacted: read, filtered and merged typed alike
    (tmp_path / "fragments").mkdir()
    first = rows[0]["trial_id"]
    fragment = _text_table([dict(r, **{"cfg.eval.halting": ["trained"]}) for r in rows if r["trial_id"] == first])
    pq.write_table(fragment, tmp_path / "fragments" / "part-00000000000000000001-old.parquet")
    (tmp_path / "trials" / f"{first}.parquet").unlink()
    assert parquet.read_trial(tmp_path, first).column("cfg.model.spectral").to_pylist()[0] == 0.5
    with parquet.read_only():
        assert parquet.read_current(tmp_path).num_rows == len(rows)
    merged = pq.read_table(parquet.collect(tmp_path))
    assert merged.num_rows == len(rows) and merged.schema.field("cfg.model.spectral").type == pa.float64()
