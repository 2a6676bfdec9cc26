"""Disk cache of generated task data, so concurrent trials share one generation.

A generated set is keyed by (task name, task params, size, n, seed, task.version) and stored as one
`.npz` file under the cache directory. Files are written to a temporary name in the same directory
and moved into place with `os.replace` (atomic on POSIX), so a reader never sees a partial file even
when several trials generate the same set at once; the last writer wins with identical bytes.

The directory is `cache_dir` if given, else env `FPR_CACHE_DIR`, else `~/.cache/fpr-sweep/tasks`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fpr_core.tasks.base import Task, TaskData

CACHE_ENV = "FPR_CACHE_DIR"
"""Environment variable overriding the default cache directory."""
_META_PREFIX = "meta__"


def default_cache_dir() -> Path:
    """`$FPR_CACHE_DIR` if set, else `~/.cache/fpr-sweep/tasks`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "fpr-sweep" / "tasks"


def cache_key(task: Task, size: int, n: int, seed: int) -> str:
    """Canonical JSON of everything that determines a generated set."""
    key = {"task": task.name, "params": task.params, "size": int(size), "n": int(n),
           "seed": int(seed), "version": str(task.version)}
    return json.dumps(key, sort_keys=True, default=str)


def cache_path(cache_dir: Path, task: Task, size: int, n: int, seed: int) -> Path:
    """File holding the set for this key (a readable prefix plus a hash of the full key)."""
    digest = hashlib.sha256(cache_key(task, size, n, seed).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{task.name}_size{size}_n{n}_{digest}.npz"


def save(path: Path, data: TaskData, key: str) -> None:
    """Write `data` to `path` atomically (temporary file in the same directory + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"inputs": data.inputs, "targets": data.targets, "mask": data.mask,
              "size": np.asarray(data.size), "key": np.asarray(key)}
    arrays.update({_META_PREFIX + k: v for k, v in data.meta.items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: Path, key: str) -> TaskData | None:
    """The set stored at `path` if it exists, is readable and was stored under `key`; else None."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            meta = {k[len(_META_PREFIX):]: f[k] for k in f.files if k.startswith(_META_PREFIX)}
            return TaskData(f["inputs"], f["targets"], f["mask"], meta, int(f["size"]))
    except (OSError, KeyError, ValueError, EOFError):
        return None


def generate_cached(task: Task, n: int, size: int, seed: int,
                    cache_dir: str | os.PathLike | None | bool = None) -> TaskData:
    """`task.generate(n, size, seed)`, read from / written to the disk cache.

    cache_dir: a directory, None for `default_cache_dir()`, or False to bypass the cache.
    """
    if cache_dir is False:
        return task.generate(n, size, seed)
    directory = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
    key = cache_key(task, size, n, seed)
    path = cache_path(directory, task, size, n, seed)
    data = load(path, key)
    if data is None:
        data = task.generate(n, size, seed)
        save(path, data, key)
    return data
