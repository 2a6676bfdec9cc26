"""The sweep's record in its folder (``sweep.json`` and ``spec.yaml``): who it is, what it runs.

- ``sweep_id``: a random id made when the folder is first run; the MLflow experiment is keyed by it,
  so a second results folder (or a second user) with the same sweep name never shares runs.
- ``spec.yaml``: the spec the trials were planned from, written on the first run and only replaced
  by ``--extend``. A later run with a spec whose science differs (a different ``spec_hash``) is
  refused, naming the fields that changed, so two specs' trials never pool under one name.
- ``history``: one entry per run (created / resumed / extended), with the spec hash it ran.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from orchestrator.sweep.errors import SpecChanged
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.sections import excerpt
from orchestrator.sweep.spec import SpecError, SweepSpec, read_yaml

MAX_CHANGES_SHOWN = 8


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_info(sweep_dir: SweepDir | Path) -> dict[str, Any]:
    """sweep.json as a dict ({} when missing or unreadable)."""
    try:
        data = json.loads(SweepDir.of(sweep_dir).info.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stored_science(sweep_dir: SweepDir | Path) -> Optional[dict[str, Any]]:
    """The science part of the stored spec.yaml (None if there is none or it cannot be parsed)."""
    path = SweepDir.of(sweep_dir).spec_copy
    if not path.exists():
        return None
    try:
        return SweepSpec.model_validate(read_yaml(path)).science()
    except (SpecError, ValueError):
        return None


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two spec dicts differ: 'tasks[0].ood_sizes: [32, 64] -> [24, 32]'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_fields(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and any(isinstance(v, (dict, list)) for v in old + new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += changed_fields(a, b, f"{prefix}[{i}]")
        return out
    if old == new:
        return []
    return [f"{prefix or '(top level)'}: {excerpt(json.dumps(old, default=str), 60)} -> "
            f"{excerpt(json.dumps(new, default=str), 60)}"]


def check_spec(spec: SweepSpec, sweep_dir: SweepDir | Path, extend: bool) -> Optional[str]:
    """Refuse a spec whose science differs from the stored one (unless ``extend``); returns the
    stored spec hash it replaces when extending, else None."""
    sweep_dir = SweepDir.of(sweep_dir)
    info = read_info(sweep_dir)
    old_hash = info.get("spec_hash")
    if old_hash is None or old_hash == spec.spec_hash():
        return None
    if extend:
        return old_hash
    old = stored_science(sweep_dir)
    changes = changed_fields(old, spec.science()) if old is not None else ["(the stored spec.yaml is missing)"]
    shown = changes[:MAX_CHANGES_SHOWN] + ([f"... and {len(changes) - MAX_CHANGES_SHOWN} more"]
                                           if len(changes) > MAX_CHANGES_SHOWN else [])
    raise SpecChanged(
        f"{sweep_dir.root} holds sweep {info.get('name', sweep_dir.name)!r} run with another spec "
        f"(spec hash {old_hash}, now {spec.spec_hash()}); changed:\n  " + "\n  ".join(shown) +
        f"\nTrials of two specs must not pool under one name: give the changed spec a new `name`, or "
        f"pass --results-dir to run it elsewhere. To add these trials to this sweep on purpose, pass "
        f"--extend (recorded in {sweep_dir.info.name}).")


def write_record(sweep_dir: SweepDir | Path, spec: SweepSpec, spec_text: str, spec_path: Path, uri: str, smoke: bool,
                 extended_from: Optional[str]) -> dict[str, Any]:
    """Create or update sweep.json (keeping its sweep_id and history) and store the spec the
    first time (or when extending); returns the record."""
    layout = SweepDir.of(sweep_dir)
    info = read_info(layout)
    created = "sweep_id" not in info
    action = "created" if created else ("extended" if extended_from else "resumed")
    history = list(info.get("history", []))
    history.append({"at": _now(), "action": action, "spec_hash": spec.spec_hash(),
                    **({"extended_from": extended_from} if extended_from else {})})
    info.update({"name": layout.name, "sweep_id": info.get("sweep_id") or uuid.uuid4().hex[:12],
                 "spec_hash": spec.spec_hash(), "spec_path": str(Path(spec_path).resolve()),
                 "tracking_uri": uri, "smoke": smoke, "updated": _now(), "history": history})
    if created or extended_from or not layout.spec_copy.exists():
        _write_atomic(layout.spec_copy, spec_text)
    _write_atomic(layout.info, json.dumps(info, indent=2))
    return info
