"""A full disk as one clear stop: which write failed, where, and how much room the run needs."""
from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Optional

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
SPARE_BYTES = 64 << 20
"""Room asked for beyond the failed write: Tune's state, checkpoints and the MLflow store grow too."""


class DiskFull(RuntimeError):
    """A write failed for lack of space; the message names the path and the room needed."""

    def __init__(self, path: Path, needed: int) -> None:
        self.path = Path(path)
        self.needed = needed
        free = free_bytes(self.path)
        super().__init__(f"disk full: could not write {self.path} ({_mb(free)} free on its file system; free at "
                         f"least {_mb(needed + SPARE_BYTES)} there, then run the same command again to resume: "
                         "what finished is kept, nothing half-written is trusted).")


def is_disk_full(error: BaseException) -> bool:
    """An OSError (or an Arrow/SQLite error wrapping one) caused by a full disk or quota."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        text = str(error)
        if "No space left on device" in text or "database or disk is full" in text or "[errno 28]" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path: Path) -> int:
    for candidate in [Path(path), *Path(path).parents]:
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def failed_path(error: BaseException, default: Path) -> Path:
    filename: Optional[str] = getattr(error, "filename", None)
    return Path(filename) if filename else Path(default)


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


class DropDiskFull(logging.Filter):
    """Drops log records about a full disk (with their tracebacks): the driver stops the run on
    the first one and says so once, naming the path and the room needed."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not ((error is not None and is_disk_full(error)) or is_disk_full(RuntimeError(record.getMessage())))
