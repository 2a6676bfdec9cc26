"""One driver per sweep (issue 16, fault 1): the lock held by a real second process, taken over
once that process is SIGKILLed; a holder on another host only with --force. The end-to-end case
(a second `fpr-sweep run` beside a running one) is in tests/test_stops.py."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sweep.layout import SweepDir
from orchestrator.run.lock import LockHeld, SweepLock, read_holder
from tmpfs import fill, mounted_tmpfs

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from orchestrator.run.lock import SweepLock; "
        "lock = SweepLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)")


def test_a_live_holder_blocks_and_a_killed_one_is_replaced(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid} on .*one driver per sweep"):
            SweepLock(tmp_path, force=True).acquire()  # --force never takes a live driver's lock here
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        lock = SweepLock(tmp_path)
        lock.acquire()
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert read_holder(tmp_path).token == lock.holder.token
        lock.release()
        assert not SweepDir(tmp_path).lock.exists()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_holder_on_another_host_needs_force(tmp_path):
    SweepDir(tmp_path).lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "t",
                                                   "started": "2026-01-01T00:00:00", "lease": time.time()}))
    with pytest.raises(LockHeld, match="elsewhere.*lease is current.*--force"):
        SweepLock(tmp_path).acquire()
    with SweepLock(tmp_path, force=True) as lock:
        assert lock.took_over.host == "elsewhere"
    assert not SweepDir(tmp_path).lock.exists()


# ---------------------------------------------------------------- fencing (issue 33)

TAKE = ("import sys, time; from orchestrator.run.lock import SweepLock; "
        "lock = SweepLock(sys.argv[1]); lock.acquire(); print(lock.holder.epoch, flush=True); time.sleep(600)")


def test_a_driver_whose_lease_expired_is_fenced_off_before_its_next_write(tmp_path, monkeypatch):
    """A driver suspended past its lease (here: its lease thread never ran) loses the sweep to a
    second process; on its next write it finds out: the fence raises, on_lost runs once, the spool
    refuses the append (the file is not touched) and the lease thread stops refreshing."""
    from orchestrator.store.spool import Spool
    from orchestrator.run.lock import LockLost

    monkeypatch.setenv("FPR_LOCK_REFRESH_S", "600")  # as if suspended: no refresh
    lost = []
    lock = SweepLock(tmp_path, on_lost=lost.append)
    lock.acquire()
    assert lock.holder.epoch == 1
    spool = Spool(tmp_path)
    spool.fence = lock.check
    spool.append({"op": "tags", "trial": "t", "tags": {"a": "1"}})
    before = spool.path.read_bytes()
    time.sleep(1.2)
    second = subprocess.Popen([sys.executable, "-c", TAKE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "FPR_LOCK_EXPIRY_S": "1"})
    try:
        assert second.stdout.readline().strip() == "2"  # the takeover's epoch
        with pytest.raises(LockLost, match=f"epoch 1.*lost .* to pid {second.pid} .*epoch 2"):
            spool.append({"op": "tags", "trial": "t", "tags": {"b": "2"}})
        assert spool.path.read_bytes() == before
        with pytest.raises(LockLost):
            lock.check()
        assert len(lost) == 1 and lost[0].pid == second.pid
        lock.release()  # never removes the new holder's lock
        assert read_holder(tmp_path).pid == second.pid
    finally:
        second.kill()
        second.wait(timeout=30)


def test_a_driver_starting_on_a_full_disk_leaves_no_lock(tmp_path):
    """Issue 33 row "disk full at start": the lock is created whole (a temp file, then a hard link),
    so a driver that starts on a full file system raises ENOSPC and leaves no 0-byte driver.lock
    blocking every later run. A real 1 MB tmpfs, filled."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        fill(mount)
        with pytest.raises(OSError) as full:
            SweepLock(mount).acquire()
        assert full.value.errno == errno.ENOSPC
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]  # no lock, no temp file
        (mount / "filler").unlink()
        with SweepLock(mount) as lock:  # room again: the next run starts without --force
            assert read_holder(mount).token == lock.holder.token
