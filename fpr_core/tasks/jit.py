"""numba's ``njit`` with its on-disk cache in a user cache directory, never in the source tree.

``@njit(cache=True)`` writes compiled kernels next to the source file (``__pycache__``) when that
directory is writable; a checkout, a Ray working directory or a read-only install must not gain
build debris. numba picks the cache directory when a function is decorated, so task modules import
``njit`` from here: this module sets numba's cache directory first, unless the user chose one.

Directory: ``$NUMBA_CACHE_DIR`` if set (numba's own variable), else ``$XDG_CACHE_HOME/fpr-sweep/numba``
(``~/.cache/fpr-sweep/numba`` when XDG_CACHE_HOME is unset).
"""
from __future__ import annotations

import os
from pathlib import Path

import numba
from numba import njit

__all__ = ["njit", "numba_cache_dir"]


def numba_cache_dir() -> Path:
    """Where compiled kernels are cached (see module docstring)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fpr-sweep" / "numba"


if not numba.config.CACHE_DIR:
    numba.config.CACHE_DIR = str(numba_cache_dir())
