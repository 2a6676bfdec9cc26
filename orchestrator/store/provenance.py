"""Where a result came from: git commit, package versions, host. Attached to every row and run."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import socket
import subprocess
from pathlib import Path

PACKAGES = ("fpr-sweep", "torch", "numpy", "ray", "mlflow", "optuna", "pyarrow", "numba", "chess")
"""Distributions whose versions go into the ``versions`` column."""

REPO_DIR = Path(__file__).resolve().parents[2]
"""The repository root (orchestrator/store/provenance.py -> ../../..)."""


def _git(repo_dir: str | Path, *args: str) -> str:
    """Output of a git command in ``repo_dir``. File modes are ignored: a working dir that
    `ray job submit` unpacked on a cluster loses executable bits, not code."""
    return subprocess.run(["git", "-C", str(repo_dir), "-c", "core.fileMode=false", *args], capture_output=True,
                          text=True, timeout=10, check=True).stdout


@functools.lru_cache(maxsize=None)
def git_commit(repo_dir: str | Path = REPO_DIR) -> str:
    """HEAD commit of the repo (suffix '+dirty' when tracked files changed), or 'unknown'."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD").strip()
        dirty = bool(_git(repo_dir, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def uncommitted_changes(repo_dir: str | Path | None = None) -> list[str]:
    """`git status --porcelain` lines for tracked files that differ from HEAD (what makes the commit
    '+dirty'); ['(not a git checkout)'] when git cannot tell. Default: this package's repo."""
    try:
        out = _git(repo_dir or REPO_DIR, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return ["(not a git checkout)"]
    return [line for line in out.splitlines() if line.strip()]


@functools.lru_cache(maxsize=None)
def package_versions() -> str:
    """JSON object of installed versions of PACKAGES (missing ones omitted)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return json.dumps(versions, sort_keys=True)


def hostname() -> str:
    return socket.gethostname()
