"""More fault-injection tasks (issue 33), loaded like tests/fault_tasks.py through
``FPR_TASK_PLUGINS`` with this directory on PYTHONPATH.

``retry_fails`` is prefix sums whose first attempt trains normally (stalling while the file
``hold`` exists, from its first logged step on, so a test can catch it mid-training) and whose
every later attempt raises in data generation: a trial that finished once, then fails when a
resumed driver trains it again.

``hangs_in_eval`` trains normally and never finishes evaluating its OOD split: a trial that only
a limit covering evaluation can end.
"""
from __future__ import annotations

import os
import time

from fpr_core.tasks.base import TaskData
from fpr_core.tasks.prefix_sums import PrefixSums

from fault_tasks import CountsAttempts, InjectedFault


class RetryFails(CountsAttempts, PrefixSums):
    """Params ``counter`` (one line per attempt) and ``hold`` (stall while it exists)."""

    name = "retry_fails"

    def __init__(self, counter: str, hold: str) -> None:
        super().__init__()
        self.params = {"counter": counter, "hold": hold}
        self.count_attempts()

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        attempt = self.attempt()
        if attempt >= 2:
            raise InjectedFault(f"injected fault on retry attempt {attempt}")
        return super().generate(n, size, seed)

    def decode(self, logits):
        while os.path.exists(self.params["hold"]):
            time.sleep(0.1)
        return super().decode(logits)


class HangsInEval(CountsAttempts, PrefixSums):
    """Prefix sums that trains normally and whose evaluation never ends on sequences of ``hang_size``
    or longer (its OOD split): ``decode`` waits forever there. Params ``counter`` (one line per
    attempt) and ``hang_size``."""

    name = "hangs_in_eval"

    def __init__(self, counter: str, hang_size: int) -> None:
        super().__init__()
        self.params = {"counter": counter, "hang_size": hang_size}
        self.count_attempts()

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        self.attempt()
        return super().generate(n, size, seed)

    def decode(self, logits):
        while logits.shape[1] >= self.params["hang_size"]:  # (N, T, n_classes): T is the sequence length
            time.sleep(0.1)
        return super().decode(logits)
