"""The Arrow/Parquet results of a sweep: the only Parquet reader and writer (the only module
importing pyarrow besides the schema).

Layout under ``results/<sweep>/`` (paths from sweep/layout.py):
  trials/<trial_id>.parquet   one file per trial, every (trial, split) row; written by the driver
                              under a dot-prefixed temp name, then ``os.replace``d (atomic)
  fragments/part-*.parquet    finished trials' files compacted into sorted files of COMPACT_EVERY
                              trials as the sweep runs (see "bounded collection" below)
  results.parquet             every trial's rows collected into one table (atomic too), one row per
                              trial x split; rebuilt at the end of every run and resume

Every file is written with ``schema.results_schema()`` (fixed and versioned), so pandas, polars,
duckdb and ``pyarrow.dataset`` all read the same columns.

Only our own files are read: a trial file must carry the schema's version and its own trial id in
its Parquet metadata (a user's export saved next to them is ignored with a warning), and a file
that cannot be read (truncated by a full disk, garbage from another tool) is moved to
``trials/.corrupt/`` with a warning: its trial counts as unfinished and runs again. A file this
user may not read is skipped with a warning saying so, never moved (it may be fine), and within
``read_only()`` (`status`, `report`, `--dry-run`) nothing is moved or rewritten at all.

Identity from the files (issue 33): every trial file carries its spec hash and a random write id in
its metadata; results.parquet records a digest of the write ids (and fragment names) it was built
from, so it counts as current when its inputs are the same files, whatever their mtimes say (a
trial file restored from a backup, clock skew).
"""
from __future__ import annotations

import ast
import datetime as dt
import errno
import hashlib
import os
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fpr_core.config import TRAINED
from orchestrator.store.schema import results_schema
from orchestrator.sweep.columns import config_cell, config_kinds
from orchestrator.store.space import DiskFull, is_disk_full
from orchestrator.sweep.layout import SweepDir, SweepPath

VERSION_KEY = b"fpr_sweep.schema_version"
TRIAL_KEY = b"fpr_sweep.trial_id"
"""Parquet key-value metadata of every trial file: the schema version and the trial it holds."""
SPEC_KEY = b"fpr_sweep.spec_hash"
WRITE_KEY = b"fpr_sweep.write_id"
"""Also on every trial file: the spec hash of its rows and a random id of this write."""
INPUTS_KEY = b"fpr_sweep.inputs"
"""On results.parquet: the digest of the inputs it was built from (``_inputs_digest``)."""
CORRUPT_DIR = ".corrupt"

_READ_ONLY = threading.local()


@contextmanager
def read_only() -> Iterator[None]:
    """Within (this thread): nothing is moved or rewritten. An unreadable file is reported and
    skipped, not quarantined; a stale results.parquet is rebuilt in memory, not on disk."""
    before = getattr(_READ_ONLY, "on", False)
    _READ_ONLY.on = True
    try:
        yield
    finally:
        _READ_ONLY.on = before


def _is_read_only() -> bool:
    return getattr(_READ_ONLY, "on", False)


def _denied(error: BaseException) -> bool:
    """A permission error (pyarrow's errors carry errno or only the text)."""
    return (isinstance(error, PermissionError) or getattr(error, "errno", None) in (errno.EACCES, errno.EPERM)
            or "Permission denied" in str(error))


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


warn: Callable[[str], None] = _print_warning
"""Where quarantine and stray-file warnings go (stderr; the CLI may redirect it)."""


def _atomic_write(table: pa.Table, path: Path, **options: Any) -> None:
    """Write under a temp name, fsync, then rename: a crash or a full disk never leaves a partial
    file under the final name (the temp file is removed on any failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, **options)
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
    """Rows (dicts keyed by schema columns; missing ones null) as a table with the fixed schema; a
    row that names no halting protocol is the trial's own ('trained')."""
    rows = [dict(r, finished_at=_timestamp(r.get("finished_at")), halting=r.get("halting") or TRAINED) for r in rows]
    unknown = sorted({k for r in rows for k in r} - set(results_schema().names))
    if unknown:
        raise ValueError(f"result rows carry columns the schema lacks: {unknown}")
    return pa.Table.from_pylist(rows, schema=results_schema())


def write_trial_rows(sweep_dir: SweepPath, trial_id: str, rows: list[dict[str, Any]]) -> Path:
    """Atomically (re)write one trial's rows."""
    if not rows:
        raise ValueError(f"trial {trial_id}: no rows to write")
    path = SweepDir.of(sweep_dir).trial_file(trial_id)
    adopt_table(sweep_dir)
    table = rows_table(rows)
    meta = {**(table.schema.metadata or {}), TRIAL_KEY: trial_id.encode(),
            SPEC_KEY: str(rows[0].get("spec_hash") or "").encode(), WRITE_KEY: uuid.uuid4().hex.encode()}
    _atomic_write(table.replace_schema_metadata(meta), path)
    return path


def _candidate_files(sweep_dir: SweepPath) -> list[Path]:
    d = SweepDir.of(sweep_dir).trials
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def quarantine(path: Path, reason: str) -> Optional[Path]:
    """Move an unreadable results file into ``.corrupt/`` beside it, with a warning naming both
    (within ``read_only()`` only the warning)."""
    if _is_read_only():
        warn(f"{path} is unreadable ({reason}); left in place (this command only reads: the next "
             "`fpr-sweep run` sets it aside and re-runs its trial).")
        return None
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
        _unreadable(path, e)
        return None


def _unreadable(path: Path, error: BaseException) -> None:
    """A file that cannot be read: one this user may not read is only named (it may be fine);
    anything else is set aside."""
    if _denied(error):
        warn(f"cannot read {path}: permission denied; skipped (not moved: the file itself may be fine). "
             "Its trial counts as unfinished here; check the file's owner and mode.")
        return
    quarantine(path, _reason(error))


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


def trial_files(sweep_dir: SweepPath) -> list[Path]:
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
        _unreadable(path, e)
        return None


def _conform(table: pa.Table) -> pa.Table:
    """Cast a table to the current schema (columns missing from an older file become null; a row
    without a halting protocol, written before protocols existed, is 'trained'; a config column an
    older schema stored as text gets its type back: ``_typed_text``)."""
    schema = results_schema()
    kinds = config_kinds()
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if f.name in kinds and pa.types.is_string(col.type) and not pa.types.is_string(f.type):
            cols.append(_typed_text(col, kinds[f.name], f.type))
        else:
            cols.append(col.cast(f.type))
    cols = [pc.fill_null(c, TRAINED) if f.name == "halting" else c for f, c in zip(schema, cols)]
    return pa.Table.from_arrays(cols, schema=schema)


def _typed_text(col: pa.ChunkedArray, kind: str, type_: pa.DataType) -> pa.Array:
    """A config column of a schema <= 3 table (``str(value)`` of each cell; TEXT_CONFIG_VERSIONS)
    in its typed form: each distinct text read back as the Python literal it was written from
    (``'True'``, ``'0.001'``, ``"['trained', 'long']"``), then checked against the column's kind."""
    encoded = col.combine_chunks().dictionary_encode()
    values = [_text_value(kind, text) for text in encoded.dictionary.to_pylist()]
    return pa.array(values, type_).take(encoded.indices)


def _text_value(kind: str, text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = float(text) if kind == "float" else text  # 'nan', 'inf' are no literals
    return config_cell(kind, value)


def _scan(files: list[Path], columns: Optional[list[str]] = None,
          where: Optional[pc.Expression] = None) -> pa.Table:
    """Rows of our ``files`` with the fixed schema: one multi-threaded scan (~3x faster than
    reading and conforming the files one by one, benchmarks/bench_orchestration.py). When the scan
    fails (a file unreadable, or one of an older schema whose columns the scan cannot cast, such as
    schema-3 text config columns), each file is read and conformed alone, and an unreadable one
    quarantined."""
    empty = results_schema().empty_table()
    if not files:
        return empty.select(columns) if columns else empty
    try:
        return ds.dataset([str(p) for p in files], schema=results_schema(), format="parquet").to_table(
            columns=columns, filter=where)
    except (pa.ArrowException, OSError):
        table = pa.concat_tables([_conform(t) for t in (read_file(p) for p in files) if t is not None] or [empty])
        table = table.filter(where) if where is not None else table
        return table.select(columns) if columns else table


def read_trial(sweep_dir: SweepPath, trial_id: str) -> Optional[pa.Table]:
    """A trial's rows; None when it has no (readable) rows file."""
    path = SweepDir.of(sweep_dir).trial_file(trial_id)
    table = read_file(path) if path.exists() else None
    if table is None and not path.exists() and fragment_files(sweep_dir):  # compacted
        table = _scan(fragment_files(sweep_dir), where=pc.field("trial_id") == trial_id)
    return _conform(table) if table is not None and table.num_rows else None


def finished_statuses(sweep_dir: SweepPath) -> dict[str, str]:
    """trial_id -> status (the status of its first row) for every trial with rows (file or fragment)."""
    table = trial_summary_table(sweep_dir)
    return dict(zip(table.column("trial_id").to_pylist(), table.column("status").to_pylist()))


def trial_summaries(sweep_dir: SweepPath) -> list[dict[str, Any]]:
    """One dict per finished trial: trial_id, task, variant, seed, status, error."""
    return trial_summary_table(sweep_dir).select(SUMMARY_COLUMNS).to_pylist()


def read_trial_files(files: list[Path], columns: Optional[list[str]] = None) -> pa.Table:
    """Every row of ``files`` with the fixed schema (missing columns of older files as null)."""
    return _scan(files, columns)


def collect(sweep_dir: SweepPath) -> Optional[Path]:
    """Rebuild results.parquet from every trial's rows (atomic); None if no trial finished yet.
    Bounded memory at any sweep size: see collect_merged."""
    return collect_merged(sweep_dir)


def read_current(sweep_dir: SweepPath) -> pa.Table:
    """The sweep's rows as they are now, every schema column present: results.parquet, or the
    sweep's own trial files when they are newer (a sweep still running, or interrupted before its
    last collect) or it is broken; FileNotFoundError when no trial finished yet."""
    table = read_results(sweep_dir)
    if table.num_rows == 0:
        layout = SweepDir.of(sweep_dir)
        raise FileNotFoundError(f"{sweep_dir}: no {layout.results.name} and no finished trial files "
                                f"under {layout.trials}")
    return _conform(table)


def read_results(sweep_dir: SweepPath) -> pa.Table:
    """results.parquet when it is readable and current, else rebuilt from the trial files (a
    broken or stale one is set aside first), conformed to the schema; an empty table when no trial
    finished."""
    table = read_current_results(sweep_dir)
    if table is not None:
        return _conform(table)
    if _is_read_only():  # status, report: build the table in memory, leave results.parquet alone
        return pa.concat_tables([_fragment_rows(sweep_dir), read_trial_files(trial_files(sweep_dir))])
    try:
        path = collect(sweep_dir)
    except OSError as e:  # a read-only folder (someone else's sweep): build the table in memory
        warn(f"cannot rebuild {SweepDir.of(sweep_dir).results} ({e.strerror or e}); reading the trial files.")
        return pa.concat_tables([_fragment_rows(sweep_dir), read_trial_files(trial_files(sweep_dir))])
    table = read_file(path) if path is not None else None
    return _conform(table) if table is not None else results_schema().empty_table()


def read_current_results(sweep_dir: SweepPath) -> Optional[pa.Table]:
    """results.parquet if it exists, is readable, is ours and was built from the trial files and
    fragments there now (by their write ids; by mtime for a table written before the digest);
    else None."""
    path = SweepDir.of(sweep_dir).results
    try:
        built = path.stat().st_mtime
    except FileNotFoundError:
        return None
    schema = _file_schema(path)
    if schema is None:
        return None
    meta = schema.metadata or {}
    if VERSION_KEY not in meta:
        quarantine(path, "not written by fpr-sweep (no schema version in its metadata)")
        return None
    if INPUTS_KEY in meta:
        if meta[INPUTS_KEY] != _inputs_digest(fragment_files(sweep_dir), trial_files(sweep_dir)):
            return None
    else:
        parts = _candidate_files(sweep_dir) + _candidate_fragments(sweep_dir)
        if max((p.stat().st_mtime for p in parts), default=-float("inf")) > built:
            return None
    return read_file(path)


def _write_id(path: Path) -> str:
    """A trial file's write id (its size and mtime for a file written before write ids)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        if WRITE_KEY in meta:
            return meta[WRITE_KEY].decode()
        st = path.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"
    except (OSError, pa.ArrowException):
        return "unreadable"


def _inputs_digest(fragments: list[Path], loose: list[Path]) -> bytes:
    """What results.parquet is built from: fragment names (never rewritten) and each loose trial
    file's write id."""
    h = hashlib.sha256()
    for p in sorted(fragments):
        h.update(f"f:{p.name}\n".encode())
    for p in sorted(loose):
        h.update(f"t:{p.stem}:{_write_id(p)}\n".encode())
    return h.hexdigest().encode()


def spec_hashes(sweep_dir: SweepPath) -> dict[str, int]:
    """spec hash -> trials with rows of it, from the trial files and fragments alone (not sweep.json)."""
    table = pa.concat_tables([_fragment_rows(sweep_dir, ["trial_id", "spec_hash"]),
                              read_trial_files(trial_files(sweep_dir), ["trial_id", "spec_hash"])])
    out: dict[str, int] = {}
    for row in table.group_by(["spec_hash"]).aggregate([("trial_id", "count_distinct")]).to_pylist():
        out[row["spec_hash"] or ""] = row["trial_id_count_distinct"]
    return out


def accuracy_table(sweep_dir: SweepPath) -> list[dict[str, Any]]:
    """Mean exact accuracy and iterations per (task, variant, split) over the ok rows (seeds pooled)
    evaluated under the trials' own halting ('trained'; other protocols' rows are not pooled in)."""
    table = _conform(read_results(sweep_dir))
    ok = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.equal(table.column("halting"), TRAINED)))
    grouped = ok.group_by(["task", "variant", "split"]).aggregate(
        [("exact_acc", "mean"), ("iters_mean", "mean"), ("trial_id", "count")])
    return [{"task": r["task"], "variant": r["variant"], "split": r["split"],
             "exact_acc": r["exact_acc_mean"], "iters_mean": r["iters_mean_mean"], "trials": r["trial_id_count"]}
            for r in grouped.to_pylist()]


# ---------------------------------------------------------------- bounded collection at scale
#
# A sweep of 10^5 trials leaves 10^5 small files; reading them in one go cost 3.5 GB for 90 MB of
# data, and every file costs an open. So the driver compacts finished trials' files into sorted
# fragments of COMPACT_EVERY trials as the sweep runs (fragments/part-*.parquet; only final trials,
# whose rows are never rewritten), and collect merges the sorted fragments (plus the few loose
# trial files) into results.parquet chunk by chunk: memory is bounded by the fragment count times
# one read batch, not by the size of the sweep.

COMPACT_EVERY = 1000
"""Finished trial files per fragment."""
FRAGMENT_ROW_GROUP = 1024
"""Rows per row group of a fragment: the merge holds about one row group of every fragment."""
MERGE_CHUNK_ROWS = 8192
"""Rows results.parquet is written in, per step of the merge."""
ORDER = [("task", "ascending"), ("variant", "ascending"), ("seed", "ascending"), ("trial_id", "ascending"),
         ("size", "ascending"), ("halting", "ascending")]
"""The order of results.parquet (and of every fragment)."""
ORDER_COLUMNS = [name for name, _ in ORDER]
SUMMARY_COLUMNS = ["trial_id", "task", "variant", "seed", "status", "error"]


def _candidate_fragments(sweep_dir: SweepPath) -> list[Path]:
    d = SweepDir.of(sweep_dir).fragments
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def fragment_files(sweep_dir: SweepPath) -> list[Path]:
    """The sweep's own readable fragments (unreadable ones quarantined, foreign ones ignored); in a
    folder that holds results.parquet alone, that table (see ``_table_only``)."""
    out = []
    for path in _candidate_fragments(sweep_dir) or _table_only(sweep_dir):
        schema = _file_schema(path)
        if schema is None:
            continue
        if VERSION_KEY in (schema.metadata or {}):
            out.append(path)
        else:
            warn(f"{path} was not written by this sweep (no fpr-sweep schema metadata); ignoring it.")
    return out


def _table_only(sweep_dir: SweepPath) -> list[Path]:
    """[results.parquet] when it is the only record of the sweep's trials (no trial file, no
    fragment, nothing set aside as corrupt: a folder copied or committed without trials/), else [].
    Its rows are then the finished trials, for every reader alike (status, --dry-run, run, report,
    eval); ``adopt_table`` makes it a real fragment before anything else is written there."""
    layout = SweepDir.of(sweep_dir)
    if not layout.results.exists() or any(_has_parquet(d) for d in (layout.trials, layout.fragments, layout.corrupt)):
        return []
    return [layout.results]


def _has_parquet(folder: Path) -> bool:
    """Any results file (or one set aside) in ``folder``; stops at the first (it runs before every
    trial write, in folders of up to COMPACT_EVERY files)."""
    try:
        return any(e.name.endswith(".parquet") or ".parquet." in e.name for e in os.scandir(folder)
                   if not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return False


def adopt_table(sweep_dir: SweepPath) -> Optional[Path]:
    """Copy a results.parquet that is the folder's only record of its trials into fragments/,
    before the first trial file is written beside it: the table is rebuilt from trial files and
    fragments, so without this its trials would be dropped (and trained again)."""
    if not _table_only(sweep_dir):
        return None
    layout = SweepDir.of(sweep_dir)
    table = read_file(layout.results)
    if table is None or table.num_rows == 0:
        return None
    path = layout.fragments / f"part-{0:020d}-adopted.parquet"
    _atomic_write(_in_order(_conform(table)), path, row_group_size=FRAGMENT_ROW_GROUP)
    return path


def _in_order(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, sort_keys=ORDER))


def compact(sweep_dir: SweepPath, trial_ids: Iterable[str]) -> Optional[Path]:
    """Move the files of these finished trials into one sorted fragment, then delete them.

    Only for final trials. A crash between the fragment's write and the deletions leaves a trial in
    both places; readers then take the loose file (see ``_superseding``)."""
    layout = SweepDir.of(sweep_dir)
    paths = [p for p in (layout.trial_file(t) for t in trial_ids) if p.exists()]
    if not paths:
        return None
    path = layout.fragments / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    _atomic_write(_in_order(read_trial_files(paths)), path, row_group_size=FRAGMENT_ROW_GROUP)
    for p in paths:
        p.unlink(missing_ok=True)
    return path


def compacted_ids(sweep_dir: SweepPath) -> set[str]:
    """Trial ids held by fragments."""
    ids = read_trial_files(fragment_files(sweep_dir), ["trial_id"]).column("trial_id")
    return set(pc.unique(ids).to_pylist())


def _superseding(sweep_dir: SweepPath) -> Optional[pc.Expression]:
    """Fragment rows to keep: those of trials without a loose file. A loose file of a compacted
    trial is newer (rows rewritten later, e.g. by `fpr-sweep eval`) or identical (a crash between
    a fragment's write and the deletions), so it wins either way."""
    loose = [p.stem for p in trial_files(sweep_dir)]
    return ~pc.field("trial_id").isin(loose) if loose else None


def _fragment_rows(sweep_dir: SweepPath, columns: Optional[list[str]] = None) -> pa.Table:
    fragments = fragment_files(sweep_dir)
    return _scan(fragments, columns, _superseding(sweep_dir) if fragments else None)


def trial_summary_table(sweep_dir: SweepPath) -> pa.Table:
    """trial_id, task, variant, seed, status, error: the first row of every trial, fragments and
    loose files alike (one projected scan, not one read per file)."""
    table = pa.concat_tables([_fragment_rows(sweep_dir, SUMMARY_COLUMNS),
                              read_trial_files(trial_files(sweep_dir), SUMMARY_COLUMNS)])
    first = table.group_by("trial_id", use_threads=False).aggregate(
        [(c, "first") for c in SUMMARY_COLUMNS[1:]])
    return first.rename_columns([c if c == "trial_id" else c.removesuffix("_first") for c in first.column_names])


def collect_merged(sweep_dir: SweepPath) -> Optional[Path]:
    """Rebuild results.parquet from fragments and loose trial files in bounded memory (atomic);
    None if no trial finished yet. Loose files are sorted in batches of COMPACT_EVERY (to temporary
    runs when there is more than one batch), then every sorted run is merged chunk by chunk."""
    fragments, loose = fragment_files(sweep_dir), trial_files(sweep_dir)
    if not fragments and not loose:
        return None
    path = SweepDir.of(sweep_dir).results
    keep = _superseding(sweep_dir)
    digest = _inputs_digest(fragments, loose)  # before reading them: a file replaced meanwhile reads as stale
    with tempfile.TemporaryDirectory(prefix="fpr-collect-") as scratch:
        runs: list[Any] = [_FragmentRun(f, keep) for f in fragments]
        batches = [loose[i:i + COMPACT_EVERY] for i in range(0, len(loose), COMPACT_EVERY)]
        for i, batch in enumerate(batches):
            table = _in_order(read_trial_files(batch))
            if len(batches) == 1:
                runs.append(table)
            else:
                run = Path(scratch) / f"run-{i}.parquet"
                pq.write_table(table, run, row_group_size=FRAGMENT_ROW_GROUP)
                runs.append(_FragmentRun(run))
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _merge_runs(runs, tmp, {INPUTS_KEY: digest})
            os.replace(tmp, path)
        except (OSError, pa.ArrowException) as e:
            if is_disk_full(e):
                raise DiskFull(path, sum(p.stat().st_size for p in fragments + loose)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class _FragmentRun:
    """A sorted file and the rows of it to keep (None: all)."""

    path: Path
    keep: Optional[pc.Expression] = None


class _RunReader:
    """Sequential reader of one sorted run (a fragment or an in-memory table)."""

    def __init__(self, run: Any) -> None:
        self._keep = None
        if isinstance(run, pa.Table):
            self._batches = iter(run.to_batches(MERGE_CHUNK_ROWS))
        else:
            self._batches = pq.ParquetFile(run.path).iter_batches(batch_size=FRAGMENT_ROW_GROUP)
            self._keep = run.keep
        self._buffer: Optional[pa.Table] = None

    def keys(self, run: Any) -> pa.Table:
        if isinstance(run, pa.Table):
            return run.select(ORDER_COLUMNS)
        dataset = ds.dataset([str(run.path)], schema=results_schema(), format="parquet")
        return dataset.to_table(columns=ORDER_COLUMNS, filter=run.keep)

    def take(self, n: int) -> pa.Table:
        """The next n rows."""
        pieces, have = [], 0
        if self._buffer is not None:
            pieces.append(self._buffer)
            have = self._buffer.num_rows
        while have < n:
            batch = pa.Table.from_batches([next(self._batches)])
            if self._keep is not None:
                batch = batch.filter(self._keep)
            pieces.append(batch)
            have += batch.num_rows
        table = _conform(pa.concat_tables(pieces, promote_options="permissive")) if len(pieces) > 1 \
            else _conform(pieces[0])
        self._buffer = table.slice(n) if table.num_rows > n else None
        return table.slice(0, n)


def _merge_runs(runs: list[Any], out: Path, metadata: Optional[dict[bytes, bytes]] = None) -> None:
    """K-way merge of sorted runs into ``out``: the global order comes from the order columns
    alone; each chunk then takes the next rows it needs from every run, in run order."""
    import numpy as np

    readers = [_RunReader(run) for run in runs]
    keys = []
    for r, (reader, run) in enumerate(zip(readers, runs)):
        k = reader.keys(run)
        keys.append(k.append_column("run", pa.array(np.full(k.num_rows, r, dtype=np.int32)))
                     .append_column("row", pa.array(np.arange(k.num_rows, dtype=np.int64))))
    merged = pa.concat_tables(keys)
    order = pc.sort_indices(merged, sort_keys=ORDER + [("run", "ascending"), ("row", "ascending")])
    run_of = merged.column("run").take(order).to_numpy()
    del merged, keys
    schema = results_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
    with pq.ParquetWriter(out, schema) as writer:
        for start in range(0, len(run_of), MERGE_CHUNK_ROWS):
            chunk_runs = run_of[start:start + MERGE_CHUNK_ROWS]
            counts = np.bincount(chunk_runs, minlength=len(readers))
            present = np.flatnonzero(counts)
            offsets = dict(zip(present, np.concatenate([[0], np.cumsum(counts[present])[:-1]])))
            pieces = [readers[r].take(int(counts[r])) for r in present]
            index = np.empty(len(chunk_runs), dtype=np.int64)
            for r in present:  # the k-th row of run r in this chunk is the k-th row taken from r
                where = np.flatnonzero(chunk_runs == r)
                index[where] = offsets[r] + np.arange(len(where))
            writer.write_table(pa.concat_tables(pieces).take(pa.array(index)))
