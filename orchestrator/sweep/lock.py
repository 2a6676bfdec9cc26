"""One driver per sweep: a lock file in the sweep folder holding the owner's pid, host and a lease.

The driver refreshes the lease every LEASE_REFRESH_S from a background thread. A lock is *stale*
when its holder is gone: on this host, its pid no longer runs (or runs another program); on any
host, its lease has not been refreshed for LEASE_EXPIRY_S (on shared storage, where another host's
pid cannot be checked). A second `fpr-sweep run` on a held lock exits 2 naming the holder. A
holder that died on this host (SIGKILL, a crash) is replaced with a note; a holder on another
host only with ``--force``; a live driver on this host never. `status` and `report` take no
lock: they read files that are only ever replaced atomically.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from orchestrator.sweep.layout import SweepDir

LEASE_REFRESH_S = 15.0
LEASE_EXPIRY_S = 120.0
"""A lease not refreshed for this long counts as abandoned (the holder's host died or lost the
shared storage); 8 missed refreshes, so a busy host is never mistaken for a dead one."""


class LockHeld(RuntimeError):
    """Another driver holds the sweep; the message names it and what to do."""


@dataclass
class Holder:
    """Who holds a sweep's lock (the lock file's JSON)."""

    pid: int
    """Process id of the driver on ``host``."""
    host: str
    """Host name of the driver."""
    token: str
    """Random id of this hold, so a driver never releases a lock someone else took over."""
    started: str
    """When the driver took the lock (UTC, ISO 8601)."""
    lease: float
    """Unix time of the last lease refresh."""
    cmdline: str = ""
    """The driver's command line (for the message a second driver prints)."""

    def describe(self) -> str:
        age = time.time() - self.lease
        return f"pid {self.pid} on {self.host} (since {self.started}, lease refreshed {age:.0f} s ago)"


def _cmdline(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale(holder: Holder) -> bool:
    """The holder is gone: a dead (or recycled) pid on this host, or an expired lease anywhere."""
    if time.time() - holder.lease > LEASE_EXPIRY_S:
        return True
    if holder.host != socket.gethostname():
        return False
    if not _alive(holder.pid):
        return True
    now = _cmdline(holder.pid)
    return bool(holder.cmdline) and now is not None and now != holder.cmdline  # pid reused


def read_holder(sweep_dir: Path) -> Optional[Holder]:
    try:
        data = json.loads(SweepDir(Path(sweep_dir)).lock.read_text())
        return Holder(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, OSError):  # torn or foreign: treat as an abandoned lock
        return Holder(pid=-1, host="?", token="", started="?", lease=0.0)


class SweepLock:
    """``with SweepLock(sweep_dir, force=...):`` holds the sweep for one driver."""

    def __init__(self, sweep_dir: Path, force: bool = False) -> None:
        self.path = SweepDir(Path(sweep_dir)).lock
        self.force = force
        self.holder = Holder(os.getpid(), socket.gethostname(), uuid.uuid4().hex,
                             dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time(),
                             _cmdline(os.getpid()) or "")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.took_over: Optional[Holder] = None

    def acquire(self) -> None:
        while not self._create():
            current = read_holder(self.path.parent)
            if current is None:
                continue  # released between our attempt and the read: try again
            if current.host == self.holder.host and current.pid == self.holder.pid:
                break  # our own lock (a second run_sweep in one process, as in tests)
            self._check_takeover(current)
            self.took_over = current
            self.path.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._refresh, name="sweep-lock-lease", daemon=True)
        self._thread.start()

    def _check_takeover(self, current: Holder) -> None:
        """A holder that provably died on this host is replaced; one on another host only with
        --force (its pid cannot be checked from here); a live one on this host never."""
        here = current.host == self.holder.host
        if here and not is_stale(current):
            raise LockHeld(f"{self.path.parent} is being run by {current.describe()}: one driver per sweep. "
                           "Wait for it, stop it (Ctrl-C, or SIGTERM to that pid), or watch it with "
                           "`fpr-sweep status`.")
        if here or self.force:
            return
        state = "its lease expired, so it looks gone" if is_stale(current) else "its lease is current"
        raise LockHeld(f"{self.path} is held by {current.describe()}; {state}. If that driver is gone, "
                       "re-run with --force to take the sweep over.")

    def _create(self) -> bool:
        """O_EXCL create: of two drivers starting together exactly one succeeds."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self.holder), f)
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(LEASE_REFRESH_S):
            current = read_holder(self.path.parent)
            if current is None or current.token != self.holder.token:
                return  # taken over (--force elsewhere): never overwrite the new holder
            self.holder.lease = time.time()
            tmp = self.path.with_name(f".{self.path.name}.{self.holder.token[:8]}")
            try:
                tmp.write_text(json.dumps(asdict(self.holder)))
                os.replace(tmp, self.path)
            except OSError:  # a full disk: the old lease stays, and expires only after LEASE_EXPIRY_S
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_holder(self.path.parent)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "SweepLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
