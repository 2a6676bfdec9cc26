"""SIGTERM and SIGHUP handled like Ctrl-C, and a way for the driver to stop a sweep itself.

What a scheduler, `timeout`, `systemctl stop` or a closed terminal sends should not abort the
driver mid-write (without this, Ray's own handler aborts the process with exit 134, leaving MLflow
runs RUNNING and no results table). Each is turned into SIGINT, which Tune handles by saving its
state, stopping the trials and returning from ``fit()``; the driver then writes what finished and
prints its summary. ``request`` does the same for a reason found inside the driver (a full disk).
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class StopRequests:
    """``with StopRequests() as stops:`` around the Tune run; ``stops.reason`` says why it stopped."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.request(f"{signal.Signals(signum).name} received")

    def request(self, reason: str) -> None:
        """Stop the sweep as Ctrl-C would (only the first reason is kept)."""
        first = self.reason is None
        if first:
            self.reason = reason
        installed = bool(self._previous)  # outside the Tune run a stop only records its reason
        if installed and (first or threading.current_thread() is threading.main_thread()):
            signal.raise_signal(signal.SIGINT)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
