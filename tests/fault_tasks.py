"""Fault-injection tasks for the reliability tests, loaded only through the task plugin mechanism
(``FPR_TASK_PLUGINS=fault_tasks`` with this directory on PYTHONPATH); nothing in fpr_core or the
orchestrator knows about them.

``held_parity`` (below) stalls training while a file exists.

``flaky_parity`` is prefix sums whose data generation raises on the first ``fail_attempts``
attempts of a trial (``-1``: on every attempt). Each attempt builds a fresh task object and
appends one line to the file ``counter`` on its first ``generate`` call, so a test can count how
often Tune started the trial. The instance-unique ``version`` keeps the disk cache from skipping
``generate`` on a retry.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from fpr_core.tasks.base import TaskData
from fpr_core.tasks.prefix_sums import PrefixSums


class InjectedFault(RuntimeError):
    """The error a flaky task raises on purpose."""


def attempts(counter: str | Path) -> int:
    """How many attempts the trial counting into ``counter`` has started."""
    path = Path(counter)
    return len(path.read_text().splitlines()) if path.exists() else 0


class CountsAttempts:
    """Mixin for a task a test counts the attempts of: each attempt builds a fresh task object, which
    appends one line to the file ``params['counter']`` on its first ``attempt()`` call. Call
    ``count_attempts()`` from ``__init__``; the instance-unique ``version`` keeps the disk cache from
    skipping ``generate`` on a retry. (Not a Task itself, so the plugin loader registers only the
    tasks that use it.)"""

    params: dict

    def count_attempts(self) -> None:
        self.version = uuid.uuid4().hex  # never served from the disk cache: every attempt generates
        self._counted = False

    def attempt(self) -> int:
        """This attempt's number (1 for the first), counting it on the first call."""
        if not self._counted:
            self._counted = True
            with open(self.params["counter"], "a") as f:
                f.write(f"{os.getpid()}\n")
        return attempts(self.params["counter"])


class FlakyParity(CountsAttempts, PrefixSums):
    """Prefix sums that fail on purpose: params ``counter`` (file path) and ``fail_attempts``."""

    name = "flaky_parity"

    def __init__(self, counter: str, fail_attempts: int = 0) -> None:
        super().__init__()
        self.params = {"counter": counter, "fail_attempts": fail_attempts}
        self.count_attempts()

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        attempt = self.attempt()
        fail = self.params["fail_attempts"]
        if fail < 0 or attempt <= fail:
            raise InjectedFault(f"injected fault on attempt {attempt}")
        return super().generate(n, size, seed)


class HeldParity(PrefixSums):
    """Prefix sums whose training stalls while the file ``hold`` exists, from its ``after``-th
    logged step on (``decode`` runs at every log step): a trial a test can stop mid-training at a
    known step, past its first checkpoint, whatever the machine's speed."""

    name = "held_parity"

    def __init__(self, hold: str, after: int = 3) -> None:
        super().__init__()
        self.params = {"hold": hold, "after": after}
        self._decodes = 0

    def decode(self, logits):
        self._decodes += 1
        while self._decodes >= self.params["after"] and os.path.exists(self.params["hold"]):
            time.sleep(0.1)
        return super().decode(logits)
