"""One driver per sweep (issue 16, fault 1): the lock held by a real second process, taken over
once that process is SIGKILLed; a holder on another host only with --force. The end-to-end case
(a second `fpr-sweep run` beside a running one) is in tests/test_stops.py."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.lock import LockHeld, SweepLock, read_holder

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from orchestrator.sweep.lock import SweepLock; "
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
