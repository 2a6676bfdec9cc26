"""Tune's pickled state is restored only from a sweep folder this user wrote.

Tune keeps its experiment state as pickles (``tuner.pkl``, trial objects inside
``experiment_state-*.json``); unpickling runs whatever code they name. A results folder on shared
storage, or one copied from a colleague, must not become a way to run code as whoever resumes it.
So the driver signs the state files it leaves behind (HMAC-SHA256 with a key only this user can
read, ``~/.config/fpr-sweep/state.key``) and records its own uid; before a restore every such file
must be owned by this user, writable by no one else, and carry a valid signature. Otherwise the
state is not unpickled: it is set aside, and the unfinished trials start again from scratch (the
finished ones keep their Parquet rows, which are data, never code).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Optional

KEY_ENV = "FPR_SWEEP_STATE_KEY"
"""Path of the signing key (default ~/.config/fpr-sweep/state.key, created 0600 on first use)."""
TRUST_FILE = ".fpr-trust.json"
SIGN_EVERY_S = 5.0


def key_path() -> Path:
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".config" / "fpr-sweep" / "state.key")


def _key() -> bytes:
    """This user's signing key, created on first use. The key is written whole under a private name
    and hard-linked into place, so a process that races this one reads a complete key, never an
    empty file, and both end with the same key (the first link wins)."""
    path = key_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes()


def state_files(study_dir: Path) -> list[Path]:
    """Files Tune may unpickle on restore: everything at the experiment's top level, and any
    pickle below it."""
    study_dir = Path(study_dir)
    top = [p for p in study_dir.iterdir() if p.is_file() and p.name != TRUST_FILE]
    return sorted(set(top) | {p for p in study_dir.rglob("*.pkl") if p.is_file()})


def _digest(key: bytes, path: Path) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            mac.update(chunk)
    return mac.hexdigest()


def sign(study_dir: Path, since: float = 0.0) -> None:
    """Record owner and digests of the state files (those modified after ``since`` are re-digested)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return
    key = _key()
    record = _read(study_dir)
    files = record.get("files", {}) if record.get("owner") == os.getuid() else {}
    current = {}
    for path in state_files(study_dir):
        rel = str(path.relative_to(study_dir))
        try:
            fresh = path.stat().st_mtime >= since or rel not in files
            current[rel] = _digest(key, path) if fresh else files[rel]
        except FileNotFoundError:  # replaced while signing: the next pass signs the new one
            continue
    tmp = study_dir / f".{TRUST_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"owner": os.getuid(), "dir": str(study_dir.resolve()), "files": current}))
    os.replace(tmp, study_dir / TRUST_FILE)


def _read(study_dir: Path) -> dict:
    try:
        data = json.loads((Path(study_dir) / TRUST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _unsafe_owner(path: Path) -> Optional[str]:
    st = path.lstat()
    if st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    return None


def untrusted_reason(study_dir: Path) -> Optional[str]:
    """None when every state file under ``study_dir`` was signed by this user and is unchanged;
    else why not (the state must then not be unpickled)."""
    study_dir = Path(study_dir)
    problem = _unsafe_owner(study_dir)
    if problem:
        return problem
    record = _read(study_dir)
    if record.get("owner") != os.getuid():
        return f"{study_dir} carries no signature of yours ({TRUST_FILE} missing or from another user)"
    key = _key()
    for path in state_files(study_dir):
        problem = _unsafe_owner(path)
        if problem:
            return problem
        rel = str(path.relative_to(study_dir))
        expected = record["files"].get(rel)
        if expected is None or not hmac.compare_digest(expected, _digest(key, path)):
            return f"{path} changed after this user's driver last signed it"
    return None


def saved_elsewhere(study_dir: Path) -> Optional[str]:
    """The folder the experiment's state was last signed in, when that is not ``study_dir`` (the
    sweep folder was moved or copied since), else None. Tune restores such a state, but a trial it
    restores still writes its checkpoints under the old folder (Ray 2.60 checks its storage marker
    there, and the trial fails once the old folder is gone)."""
    recorded = _read(study_dir).get("dir")
    return recorded if isinstance(recorded, str) and recorded != str(Path(study_dir).resolve()) else None


class Signer:
    """Re-signs a running experiment's state every SIGN_EVERY_S (and once at the end), so a driver
    killed mid-run leaves state the next run can trust up to its last few seconds."""

    def __init__(self, study_dir: Path) -> None:
        self.study_dir = Path(study_dir)
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tune-state-signer", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(SIGN_EVERY_S):
            self._sign()

    def _sign(self) -> None:
        try:
            sign(self.study_dir, since=self.started)
        except OSError:  # a full disk, a file replaced mid-read: the next pass tries again
            pass

    def __enter__(self) -> "Signer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sign()
