"""A full disk is a clear stop (issue 16, fault 8 of the report): a real tmpfs that fills up
mid-sweep under real Ray and the real CLI. One message names the path and the room needed, the
summary follows, exit 1; nothing half-written is trusted; the next run, with room, resumes without
claiming the driver was killed and removes what it set aside."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_BASE, write_spec
from tmpfs import fill, mounted_tmpfs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_ADDRESS": "", "FPR_TASK_PLUGINS": "fault_tasks", "FPR_TRACKING_DRAIN_S": "5",
       "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs."""
    with mounted_tmpfs(tmp_path / "disk", "64m") as mount:
        yield mount


def test_disk_full_stops_with_one_message_and_the_next_run_resumes(tmp_path, small_disk):
    hold = tmp_path / "hold"
    hold.touch()
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 60, "log_every": 10, "checkpoint_every": 20}}
    path = write_spec(tmp_path, name="full", base=base, max_concurrent=1, results_dir=str(small_disk), tasks=[
        {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]},
        {"name": "held_parity", "params": {"hold": str(hold)}, "train_size": 8, "ood_sizes": [16]}])
    sweep_dir = small_disk / "full"
    (small_disk / "filler").touch()
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=ENV, cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(list((sweep_dir / "trials").glob("*.parquet"))) < 1:
            assert driver.poll() is None and time.time() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(3)  # the held trial is training
        filler = fill(small_disk)
        hold.unlink()
        assert driver.wait(timeout=300) == 1
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    out = log_path.read_text()
    assert "disk full: could not write" in out and "free at least" in out, out[-4000:]
    assert out.count("disk full: could not write") == 1 and "trials: 1 ok" in out
    assert "Traceback" not in out and "Errno 28" not in out and "Aborted" not in out, out[-4000:]
    assert [p.name for p in (sweep_dir / "trials").iterdir()] == [p.name for p in (sweep_dir / "trials").glob(
        "*.parquet")] and len(list((sweep_dir / "trials").glob("*.parquet"))) == 1  # no temp files, no half file

    filler.unlink()
    again = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path)], capture_output=True,
                           text=True, timeout=400, env=ENV, cwd=REPO)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "driver was killed" not in again.stdout and "Traceback" not in again.stdout + again.stderr
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df) == 4 and df.trial_id.nunique() == 2 and set(df.status) == {"ok"}
    assert not list((sweep_dir / "tune").glob("*.unreadable-*"))
