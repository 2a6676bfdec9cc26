"""A sweep folder's own SQLite MLflow store as files: the lock that serialises creating and
migrating a store, and the artifact locations it records, which must follow the folder.

MLflow's SQL store keeps absolute artifact locations (the experiment's ``artifact_location``, each
run's ``artifact_uri``, each logged model's ``artifact_location``) and its client cannot change
them. In a copied or moved sweep folder they still named the original folder: the UI listed the
original's artifacts ("No Artifacts Recorded" once it was gone), and `report` and `eval` on the copy
wrote their files into the original (issue 32). So when a folder's own store is opened at a path
other than the one it recorded, ``relocate_artifacts`` rewrites those locations to the folder's own
``mlartifacts/`` (which was copied with it). No mlflow import here: `ui` calls it before serving.
"""
from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from pathlib import Path
from typing import Iterator, Optional

from orchestrator.sweep.layout import SweepDir, SweepPath

ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))
"""Every column of MLflow's SQL schema (3.x) that holds an artifact location."""


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:////abs/x.db is absolute, sqlite:///x.db relative


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise creating and migrating a SQLite store across processes (issue 33): two sweeps
    started at once on one fresh shared store both ran MLflow's migrations, both crashed, and
    the store stayed broken. An exclusive ``flock`` on ``<store>.lock`` beside the database file,
    held around the first call (which creates the tables or upgrades them); other stores as they are."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        handle = open(db.with_name(db.name + ".lock"), "a")
    except OSError:  # a read-only folder: nothing can be created there anyway
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def own_store(uri: str, sweep_dir: SweepPath) -> Optional[Path]:
    """The database of ``uri`` when it is the sweep folder's own ``mlflow.db``, else None (a
    shared store or a tracking server: its artifact locations are not the folder's to change)."""
    db = sqlite_path(uri)
    layout = SweepDir.of(sweep_dir).resolved()
    if db is None or not db.exists() or db.resolve() != layout.mlflow_db.resolve():
        return None
    return db


def relocate_artifacts(uri: str, sweep_dir: SweepPath) -> list[str]:
    """Point every artifact location of the folder's own store that names another folder's
    ``mlartifacts/`` at this folder's; returns the old locations rewritten (none: nothing moved)."""
    db = own_store(uri, sweep_dir)
    if db is None:
        return []
    new = SweepDir.of(sweep_dir).resolved().mlflow_artifacts.as_uri()
    suffix = "/" + Path(new).name
    with store_creation_lock(uri), contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        columns = _columns(con)
        if ("experiments", "artifact_location") not in columns:
            return []  # a store MLflow has not created yet
        olds = sorted({loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                       if loc and loc.rstrip("/").endswith(suffix) and loc.rstrip("/") != new})
        for old in olds:
            old = old.rstrip("/")
            for table, column in ARTIFACT_COLUMNS:
                if (table, column) in columns:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (names above)
                                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                                (new, len(old) + 1, old, len(old) + 1, old + "/"))
    return olds


def _columns(con: sqlite3.Connection) -> set[tuple[str, str]]:
    tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {(t, row[1]) for t in tables if t in {t for t, _ in ARTIFACT_COLUMNS}
            for row in con.execute(f"PRAGMA table_info({t})")}
