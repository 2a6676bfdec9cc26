"""The Arrow/Parquet results of a sweep: the only Parquet reader and writer (the only module
importing pyarrow besides the schema).

Layout under ``results/<sweep>/`` (paths from sweep/layout.py):
  trials/<trial_id>.parquet   one file per trial, every (trial, split) row; written by the driver
                              under a dot-prefixed temp name, then ``os.replace``d (atomic)
  results.parquet             every trial file collected into one table (atomic too), one row per
                              trial x split; rebuilt at the end of every run and resume

Every file is written with ``schema.results_schema()`` (fixed and versioned), so pandas, polars,
duckdb and ``pyarrow.dataset`` all read the same columns.

Only our own files are read: a trial file must carry the schema's version and its own trial id in
its Parquet metadata (a user's export saved next to them is ignored with a warning), and a file
that cannot be read (truncated by a full disk, garbage from another tool) is moved to
``trials/.corrupt/`` with a warning: its trial counts as unfinished and runs again.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.store.schema import results_schema
from orchestrator.store.space import DiskFull, is_disk_full
from orchestrator.sweep.layout import SweepDir

VERSION_KEY = b"fpr_sweep.schema_version"
TRIAL_KEY = b"fpr_sweep.trial_id"
"""Parquet key-value metadata of every trial file: the schema version and the trial it holds."""
CORRUPT_DIR = ".corrupt"


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


warn: Callable[[str], None] = _print_warning
"""Where quarantine and stray-file warnings go (stderr; the CLI may redirect it)."""


def trials_dir(sweep_dir: Path) -> Path:
    return SweepDir(Path(sweep_dir)).trials


def results_path(sweep_dir: Path) -> Path:
    return SweepDir(Path(sweep_dir)).results


def trial_path(sweep_dir: Path, trial_id: str) -> Path:
    return SweepDir(Path(sweep_dir)).trial_file(trial_id)


def _atomic_write(table: pa.Table, path: Path) -> None:
    """Write under a temp name, fsync, then rename: a crash or a full disk never leaves a partial
    file under the final name (the temp file is removed on any failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, pa.ArrowException) as e:
        if is_disk_full(e):
            raise DiskFull(path, table.nbytes) from None
        raise
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
    table = rows_table(rows)
    meta = {**(table.schema.metadata or {}), TRIAL_KEY: trial_id.encode()}
    _atomic_write(table.replace_schema_metadata(meta), path)
    return path


def _candidate_files(sweep_dir: Path) -> list[Path]:
    d = trials_dir(sweep_dir)
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def quarantine(path: Path, reason: str) -> Optional[Path]:
    """Move an unreadable results file into ``.corrupt/`` beside it, with a warning naming both."""
    aside_dir = path.parent / CORRUPT_DIR
    aside = aside_dir / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:4]}"
    try:
        aside_dir.mkdir(exist_ok=True)
        os.replace(path, aside)
    except FileNotFoundError:  # replaced or moved by a concurrent writer: nothing to set aside
        return None
    except OSError as e:
        warn(f"{path} is unreadable ({reason}) and could not be moved aside ({e.strerror}); ignoring it.")
        return None
    warn(f"{path} is unreadable ({reason}); moved it to {aside}. Its trial counts as unfinished: the next "
         "`fpr-sweep run` trains or re-reports it.")
    return aside


def _file_schema(path: Path) -> Optional[pa.Schema]:
    """The file's schema, or None after quarantining a file whose footer cannot be read."""
    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as e:
        quarantine(path, _reason(e))
        return None


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def is_own_trial_file(path: Path, schema: pa.Schema) -> bool:
    """Written by a sweep: the schema version in its metadata, and its trial id (when recorded,
    as every file since the id was added is) equal to its file name."""
    meta = schema.metadata or {}
    if VERSION_KEY not in meta:
        return False
    return meta.get(TRIAL_KEY, path.stem.encode()) == path.stem.encode()


def trial_files(sweep_dir: Path) -> list[Path]:
    """The sweep's own readable trial files (unreadable ones quarantined, foreign ones ignored)."""
    out = []
    for path in _candidate_files(sweep_dir):
        schema = _file_schema(path)
        if schema is None:
            continue
        if is_own_trial_file(path, schema):
            out.append(path)
        else:
            warn(f"{path} was not written by this sweep (no fpr-sweep trial metadata); ignoring it.")
    return out


def read_file(path: Path, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    """One results file read through one open handle (``pq.read_table(path)`` opens the path twice
    and can mix two whole versions of a file replaced meanwhile); None (after quarantining it) when
    unreadable."""
    try:
        with open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as e:
        quarantine(path, _reason(e))
        return None


def _conform(table: pa.Table) -> pa.Table:
    """Cast a table to the current schema (columns missing from an older file become null)."""
    schema = results_schema()
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def read_trial(sweep_dir: Path, trial_id: str) -> Optional[pa.Table]:
    """A trial's rows; None when it has no (readable) rows file."""
    path = trial_path(sweep_dir, trial_id)
    table = read_file(path) if path.exists() else None
    return _conform(table) if table is not None and table.num_rows else None


def finished_statuses(sweep_dir: Path) -> dict[str, str]:
    """trial_id -> status (the status of its first row) for every trial with a rows file."""
    out = {}
    for path in trial_files(sweep_dir):
        table = read_file(path, columns=["status"])
        if table is not None and table.num_rows:
            out[path.stem] = table.column("status")[0].as_py()
    return out


def trial_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per finished trial: trial_id, task, variant, seed, status, error."""
    out = []
    for path in trial_files(sweep_dir):
        t = read_file(path, columns=["trial_id", "task", "variant", "seed", "status", "error"])
        if t is not None and t.num_rows:
            out.append(t.slice(0, 1).to_pylist()[0])
    return out


def read_trial_files(files: list[Path]) -> pa.Table:
    """Every row of ``files`` with the fixed schema (missing columns of older files as null)."""
    # One multi-threaded scan: ~3x faster than reading and conforming the files one by one
    # (benchmarks/bench_orchestration.py). A file that fails the scan is found and quarantined.
    try:
        return ds.dataset([str(p) for p in files], schema=results_schema(), format="parquet").to_table()
    except (pa.ArrowException, OSError):
        tables = [read_file(p) for p in files]
        return pa.concat_tables([_conform(t) for t in tables if t is not None] or [results_schema().empty_table()])


def collect(sweep_dir: Path) -> Optional[Path]:
    """Rebuild results.parquet from every trial file (atomic); None if no trial finished yet."""
    files = trial_files(sweep_dir)
    if not files:
        return None
    table = read_trial_files(files)
    order = pc.sort_indices(table, sort_keys=[("task", "ascending"), ("variant", "ascending"),
                                                      ("seed", "ascending"), ("trial_id", "ascending"),
                                                      ("size", "ascending")])
    path = results_path(sweep_dir)
    _atomic_write(table.take(order), path)
    return path


def read_current(sweep_dir: Path) -> pa.Table:
    """The sweep's rows as they are now, every schema column present: results.parquet, or the
    sweep's own trial files when they are newer (a sweep still running, or interrupted before its
    last collect) or it is broken; FileNotFoundError when no trial finished yet."""
    table = read_results(sweep_dir)
    if table.num_rows == 0:
        raise FileNotFoundError(f"{sweep_dir}: no {results_path(sweep_dir).name} and no finished trial files "
                                f"under {trials_dir(sweep_dir)}")
    return _conform(table)


def read_results(sweep_dir: Path) -> pa.Table:
    """results.parquet when it is readable and current, else rebuilt from the trial files (a
    broken or stale one is set aside first); an empty table when no trial finished."""
    table = read_current_results(sweep_dir)
    if table is not None:
        return table
    try:
        path = collect(sweep_dir)
    except OSError as e:  # a read-only folder (someone else's sweep): build the table in memory
        warn(f"cannot rebuild {results_path(sweep_dir)} ({e.strerror or e}); reading the trial files.")
        files = trial_files(sweep_dir)
        return read_trial_files(files) if files else results_schema().empty_table()
    table = read_file(path) if path is not None else None
    return table if table is not None else results_schema().empty_table()


def read_current_results(sweep_dir: Path) -> Optional[pa.Table]:
    """results.parquet if it exists, is readable, is ours and no trial file is newer; else None."""
    path = results_path(sweep_dir)
    try:
        built = path.stat().st_mtime
    except FileNotFoundError:
        return None
    newest = max((p.stat().st_mtime for p in _candidate_files(sweep_dir)), default=-float("inf"))
    if newest > built:
        return None
    schema = _file_schema(path)
    if schema is None:
        return None
    if VERSION_KEY not in (schema.metadata or {}):
        quarantine(path, "not written by fpr-sweep (no schema version in its metadata)")
        return None
    return read_file(path)


def accuracy_table(sweep_dir: Path) -> list[dict[str, Any]]:
    """Mean exact accuracy and iterations per (task, variant, split) over the ok rows (seeds pooled)."""
    table = read_results(sweep_dir)
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    grouped = ok.group_by(["task", "variant", "split"]).aggregate(
        [("exact_acc", "mean"), ("iters_mean", "mean"), ("trial_id", "count")])
    return [{"task": r["task"], "variant": r["variant"], "split": r["split"],
             "exact_acc": r["exact_acc_mean"], "iters_mean": r["iters_mean_mean"], "trials": r["trial_id_count"]}
            for r in grouped.to_pylist()]
