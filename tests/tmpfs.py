"""Real small file systems for the disk-full tests: a tmpfs mounted for a test (root only: mounting
needs CAP_SYS_ADMIN; the test is skipped elsewhere) and a way to fill one to the last byte."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. '1m') at the new folder ``mount``, lazily unmounted afterwards."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Append to ``directory/name`` until the file system refuses more (the loop ends only on
    OSError). Create the file beforehand (``touch``) where the run under test may already have
    filled the disk: creating a file on a full tmpfs can itself fail with ENOSPC (seen once in CI)."""
    filler = directory / name
    # Unbuffered: a buffered file keeps the bytes the disk refused and raises ENOSPC again when the
    # ``with`` closes it (seen in CI); a raw write either lands (perhaps in part) or raises.
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler
