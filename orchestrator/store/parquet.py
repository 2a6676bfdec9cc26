"""The Arrow/Parquet results of a sweep: the only Parquet reader and writer (the only module
importing pyarrow besides the schema).

Layout under ``results/<sweep>/`` (paths from sweep/layout.py):
  trials/<trial_id>.parquet   one file per trial, every (trial, split) row; written by the driver
                              under a dot-prefixed temp name, then ``os.replace``d (atomic)
  results.parquet             every trial file collected into one table (atomic too), one row per
                              trial x split; rebuilt at the end of every run and resume

Every file is written with ``schema.results_schema()`` (fixed and versioned), so pandas, polars,
duckdb and ``pyarrow.dataset`` all read the same columns.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.store.schema import results_schema
from orchestrator.sweep.layout import SweepDir


def trials_dir(sweep_dir: Path) -> Path:
    return SweepDir(Path(sweep_dir)).trials


def results_path(sweep_dir: Path) -> Path:
    return SweepDir(Path(sweep_dir)).results


def trial_path(sweep_dir: Path, trial_id: str) -> Path:
    return SweepDir(Path(sweep_dir)).trial_file(trial_id)


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _timestamp(value: Any) -> Optional[dt.datetime]:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def rows_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by schema columns; missing ones null) as a table with the fixed schema."""
    rows = [dict(r, finished_at=_timestamp(r.get("finished_at"))) for r in rows]
    unknown = sorted({k for r in rows for k in r} - set(results_schema().names))
    if unknown:
        raise ValueError(f"result rows carry columns the schema lacks: {unknown}")
    return pa.Table.from_pylist(rows, schema=results_schema())


def write_trial_rows(sweep_dir: Path, trial_id: str, rows: list[dict[str, Any]]) -> Path:
    """Atomically (re)write one trial's rows."""
    if not rows:
        raise ValueError(f"trial {trial_id}: no rows to write")
    path = trial_path(sweep_dir, trial_id)
    _atomic_write(rows_table(rows), path)
    return path


def trial_files(sweep_dir: Path) -> list[Path]:
    d = trials_dir(sweep_dir)
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def _conform(table: pa.Table) -> pa.Table:
    """Cast a table to the current schema (columns missing from an older file become null)."""
    schema = results_schema()
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _read(path: Path, columns: Optional[list[str]] = None) -> pa.Table:
    """One file through one open handle: ``pq.read_table(path)`` opens the path twice and can mix
    two whole versions of a file replaced meanwhile (os.replace by a running driver)."""
    with open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def read_trial(sweep_dir: Path, trial_id: str) -> Optional[pa.Table]:
    path = trial_path(sweep_dir, trial_id)
    return _conform(_read(path)) if path.exists() else None


def finished_statuses(sweep_dir: Path) -> dict[str, str]:
    """trial_id -> status (the status of its first row) for every trial with a rows file."""
    out = {}
    for path in trial_files(sweep_dir):
        status = _read(path, columns=["status"]).column("status")
        out[path.stem] = status[0].as_py() if len(status) else "failed"
    return out


def trial_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per finished trial: trial_id, task, variant, seed, status, error."""
    out = []
    for path in trial_files(sweep_dir):
        t = _read(path, columns=["trial_id", "task", "variant", "seed", "status", "error"])
        if t.num_rows:
            out.append(t.slice(0, 1).to_pylist()[0])
    return out


def collect(sweep_dir: Path) -> Optional[Path]:
    """Rebuild results.parquet from every trial file (atomic); None if no trial finished yet."""
    files = trial_files(sweep_dir)
    if not files:
        return None
    table = _scan(files)
    order = pc.sort_indices(table, sort_keys=[("task", "ascending"), ("variant", "ascending"),
                                                      ("seed", "ascending"), ("trial_id", "ascending"),
                                                      ("size", "ascending")])
    path = results_path(sweep_dir)
    _atomic_write(table.take(order), path)
    return path


def _scan(files: list[Path]) -> pa.Table:
    """Many trial files as one table. One multi-threaded scan with the fixed schema (missing
    columns of older files read as null): ~3x faster than reading and conforming the files one by
    one (benchmarks/bench_orchestration.py)."""
    return ds.dataset([str(p) for p in files], schema=results_schema(), format="parquet").to_table()


def read_results(sweep_dir: Path) -> pa.Table:
    """results.parquet, conformed to the current schema."""
    return _conform(_read(results_path(sweep_dir)))


def read_current(sweep_dir: Path) -> pa.Table:
    """The sweep's rows as they are now: results.parquet, unless trial files are newer (a sweep
    still running, or interrupted before its last collect); then the trial files themselves."""
    main, parts = results_path(sweep_dir), trial_files(sweep_dir)
    newest_part = max((p.stat().st_mtime for p in parts), default=-math.inf)
    if main.exists() and main.stat().st_mtime >= newest_part:
        return read_results(sweep_dir)
    if parts:
        return _conform(_scan(parts))
    raise FileNotFoundError(f"{sweep_dir}: no {main.name} and no trial files under {trials_dir(sweep_dir)}")


def accuracy_table(sweep_dir: Path) -> list[dict[str, Any]]:
    """Mean exact accuracy and iterations per (task, variant, split) over the ok rows (seeds pooled)."""
    table = read_results(sweep_dir)
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    grouped = ok.group_by(["task", "variant", "split"]).aggregate(
        [("exact_acc", "mean"), ("iters_mean", "mean"), ("trial_id", "count")])
    return [{"task": r["task"], "variant": r["variant"], "split": r["split"],
             "exact_acc": r["exact_acc_mean"], "iters_mean": r["iters_mean_mean"], "trials": r["trial_id_count"]}
            for r in grouped.to_pylist()]
