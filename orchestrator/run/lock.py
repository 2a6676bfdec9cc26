"""One driver per sweep: a lock file in the sweep folder holding the owner's pid, host and a lease.

The driver refreshes the lease every LEASE_REFRESH_S from a background thread. A lock is *stale*
when its holder is gone: on this host, its pid no longer runs (or runs another program); on any
host, its lease has not been refreshed for LEASE_EXPIRY_S (on shared storage, where another host's
pid cannot be checked). A second `fpr-sweep run` on a held lock exits 2 naming the holder. A
holder that died on this host (SIGKILL, a crash) is replaced with a note; a holder on another
host only with ``--force``; a live driver on this host never. `status` and `report` take no
lock: they read files that are only ever replaced atomically.

Fencing (issue 33): a lease alone cannot stop a driver that was suspended (SIGSTOP, a frozen VM,
a long GC pause) past its lease and then wakes while another driver holds the sweep. So every
hold carries a random token and an *epoch* (the taken-over holder's epoch plus one), and the
driver checks the lock file still names its own token (``SweepLock.check``) before every write of
rows, spool and MLflow, and from the lease thread. A driver that finds its lock taken over calls
``on_lost`` (the CLI stops its local Ray and exits 1 there and then) or, by default, raises
``LockLost``: it never writes again. The check is a read of a small file; a write already under
way when the process was suspended still completes (only the storage itself could fence that).
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from orchestrator.sweep.errors import LockHeld, LockLost
from orchestrator.sweep.layout import SweepDir

LEASE_REFRESH_S = 15.0
LEASE_EXPIRY_S = 120.0
"""A lease not refreshed for this long counts as abandoned (the holder's host died or lost the
shared storage); 8 missed refreshes, so a busy host is never mistaken for a dead one."""
REFRESH_ENV, EXPIRY_ENV = "FPR_LOCK_REFRESH_S", "FPR_LOCK_EXPIRY_S"
"""Override both for tests (a suspended driver's lease expires in seconds, not minutes)."""


def lease_refresh_s() -> float:
    return float(os.environ.get(REFRESH_ENV, LEASE_REFRESH_S))


def lease_expiry_s() -> float:
    return float(os.environ.get(EXPIRY_ENV, LEASE_EXPIRY_S))


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
    epoch: int = 1
    """1 for a sweep's first hold (or after a clean release), the taken-over holder's epoch + 1 on a
    takeover: a driver whose epoch is not the lock file's has been fenced off."""

    def describe(self) -> str:
        age = time.time() - self.lease
        return (f"pid {self.pid} on {self.host} (epoch {self.epoch}, since {self.started}, lease refreshed "
                f"{age:.0f} s ago)")


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
    if time.time() - holder.lease > lease_expiry_s():
        return True
    if holder.host != socket.gethostname():
        return False
    if not _alive(holder.pid):
        return True
    now = _cmdline(holder.pid)
    return bool(holder.cmdline) and now is not None and now != holder.cmdline  # pid reused


def read_holder(sweep_dir: SweepDir | Path) -> Optional[Holder]:
    try:
        data = json.loads(SweepDir.of(sweep_dir).lock.read_text())
        known = {k: v for k, v in data.items() if k in Holder.__dataclass_fields__}
        return Holder(**known)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, OSError):  # torn or foreign: treat as an abandoned lock
        return Holder(pid=-1, host="?", token="", started="?", lease=0.0)


class SweepLock:
    """``with SweepLock(sweep_dir, force=...):`` holds the sweep for one driver."""

    def __init__(self, sweep_dir: SweepDir | Path, force: bool = False,
                 on_lost: Optional[Callable[[Optional[Holder]], None]] = None) -> None:
        """``on_lost(new_holder)``: called once when this driver finds its lock taken over (from
        ``check`` or the lease thread); it should stop the process. ``check`` raises LockLost
        after it (or without it)."""
        self.sweep_dir = SweepDir.of(sweep_dir)
        self.path = self.sweep_dir.lock
        self.force = force
        self.holder = Holder(os.getpid(), socket.gethostname(), uuid.uuid4().hex,
                             dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time(),
                             _cmdline(os.getpid()) or "")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.took_over: Optional[Holder] = None
        self.on_lost = on_lost
        self.lost: Optional[Holder] = None
        self._lost_once = threading.Lock()
        self._held = False

    def acquire(self) -> None:
        while not self._create():
            current = read_holder(self.sweep_dir)
            if current is None:
                continue  # released between our attempt and the read: try again
            if current.host == self.holder.host and current.pid == self.holder.pid:
                self.holder = current  # our own lock (a second run_sweep in one process, as in tests)
                break
            self._check_takeover(current)
            self.took_over = current
            self.holder.epoch = current.epoch + 1
            self.path.unlink(missing_ok=True)
        self._held = True
        self._thread = threading.Thread(target=self._refresh, name="sweep-lock-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """The fence: raise LockLost (after calling ``on_lost`` once) unless the lock file still
        names this hold. Called before every write of rows, spool and MLflow."""
        if not self._held:
            return
        current = read_holder(self.sweep_dir)
        if current is not None and current.token == self.holder.token:
            return
        self._lose(current)
        raise LockLost(self.lost_message())

    def _lose(self, current: Optional[Holder]) -> None:
        with self._lost_once:
            first = self.lost is None
            if first:
                self.lost = current or Holder(pid=-1, host="?", token="", started="?", lease=0.0, epoch=0)
        if first and self.on_lost is not None:
            self.on_lost(current)

    def lost_message(self) -> str:
        new = self.lost
        who = new.describe() if new is not None and new.pid > 0 else "nobody (the lock file was removed)"
        return (f"this driver (pid {self.holder.pid}, epoch {self.holder.epoch}) lost {self.path} to {who}: it "
                "was suspended or cut off past its lease. It stops before writing anything more; the "
                "sweep is the other driver's now (`fpr-sweep status` shows it).")

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
        """Exclusive create of a whole lock file: the JSON goes to a temp file first, which is then
        hard-linked to the lock's name (link fails if the name exists), so of two drivers starting
        together exactly one succeeds, and a full disk leaves no 0-byte lock behind (it raises)."""
        tmp = self.path.with_name(f".{self.path.name}.{self.holder.token[:8]}.new")
        text = json.dumps(asdict(self.holder))
        try:
            tmp.write_text(text)
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._create_excl(text)  # a file system without hard links
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _create_excl(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError:
            self.path.unlink(missing_ok=True)  # never leave a 0-byte lock (a full disk)
            raise
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(lease_refresh_s()):
            current = read_holder(self.sweep_dir)
            if current is None or current.token != self.holder.token:
                self._lose(current)  # taken over: never overwrite the new holder, stop writing
                return
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
        self._held = False
        current = read_holder(self.sweep_dir)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "SweepLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
