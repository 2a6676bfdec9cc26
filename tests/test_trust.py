"""Reading results never runs their code (issue 16, fault 8): a cloudpickle payload planted in a
sweep's Tune state runs neither on `status` nor on `run` (real Ray, the real CLI); state this user's
driver signed is restored, anything changed or unsigned is not."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.run import trust
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

REPO = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the results folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(study_dir: Path, marker: Path) -> None:
    """Tune's state files, each carrying the payload the way Tune embeds pickles."""
    study_dir.mkdir(parents=True)
    blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Payload(marker)).hex()}
    (study_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [], "runner_data": blob, "stats": {}}))
    (study_dir / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))


def test_signed_state_verifies_and_any_change_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "key"))
    study = tmp_path / "study"
    study.mkdir()
    (study / "tuner.pkl").write_bytes(b"state")
    (study / "experiment_state-1.json").write_text("{}")
    assert "no signature" in trust.untrusted_reason(study)
    trust.sign(study)
    assert trust.untrusted_reason(study) is None
    (study / "tuner.pkl").write_bytes(b"other")
    assert "changed after" in trust.untrusted_reason(study)
    trust.sign(study)
    (study / "trial-1").mkdir()
    (study / "trial-1" / "params.pkl").write_bytes(b"new")  # a pickle nobody signed
    assert "params.pkl changed after" in trust.untrusted_reason(study)
    trust.sign(study)
    os.chmod(study / "tuner.pkl", 0o666)
    assert "writable by other users" in trust.untrusted_reason(study)
    os.chmod(study / "tuner.pkl", 0o644)
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "another-users-key"))
    assert "changed after" in trust.untrusted_reason(study)  # signed with someone else's key


@pytest.mark.slow
def test_planted_payload_runs_on_neither_status_nor_run(tmp_path):
    path = write_spec(tmp_path, name="planted", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    sweep_dir = tmp_path / "results" / "planted"
    marker = tmp_path / "PWNED"
    _plant(sweep_dir / "tune" / f"grid-{load_spec(path).spec_hash()}", marker)
    env = {**os.environ, "RAY_ADDRESS": "", trust.KEY_ENV: str(tmp_path / "key")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                              timeout=400, env=env, cwd=REPO)

    status = cli("status", str(sweep_dir))
    assert status.returncode == 0 and not marker.exists(), status.stdout + status.stderr
    done = cli("run", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()
    assert "is not restored" in done.stdout and "no signature of yours" in done.stdout
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == 2
    assert not list((sweep_dir / "tune").glob("*.unreadable-*"))  # set aside, removed once the run completed


@pytest.mark.slow  # Python subprocesses
def test_processes_racing_to_create_the_key_all_read_the_same_whole_key(tmp_path):
    key = tmp_path / "cfg" / "state.key"
    code = ("import sys, time; from orchestrator.run import trust; t = float(sys.argv[1]);"
            "time.sleep(max(0.0, t - time.time())); print(trust._key().hex())")
    start = time.time() + 3.0
    env = {**os.environ, "FPR_SWEEP_STATE_KEY": str(key)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    keys = {out.strip() for out, _ in outs}
    assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
    assert sorted(q.name for q in key.parent.iterdir()) == ["state.key"]  # no private temp file left
