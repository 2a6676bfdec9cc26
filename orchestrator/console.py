"""Live terminal progress of a sweep (rich): a table of trials and an overall progress bar.

Fed by the driver's Tune callback; knows nothing of Ray. On a terminal it redraws in place; when
the output is a pipe or a file it prints one line per trial event instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

STYLE = {"ok": "green", "failed": "red", "diverged": "yellow", "stopped": "yellow",
         "running": "cyan", "pending": "dim", "retrying": "magenta"}
MAX_ROWS = 20
"""Trials shown in the live table (running first, then the most recent)."""


@dataclass
class TrialLine:
    trial_id: str
    task: str
    variant: str
    seed: int
    status: str = "pending"
    step: Optional[int] = None
    metric: str = ""
    updated: float = 0.0


class SweepProgress:
    """Trial table + progress bar; call ``start``/``stop`` around the Tune run."""

    def __init__(self, console: Console, total: int, already_done: int = 0, title: str = "") -> None:
        self.console = console
        self.lines: dict[str, TrialLine] = {}
        self.title = title
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.bar_task = self.bar.add_task(title or "trials", total=total, completed=already_done)
        self.live: Optional[Live] = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def start(self) -> None:
        if self.interactive:
            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    def _line(self, trial_id: str, task: str, variant: str, seed: int) -> TrialLine:
        if trial_id not in self.lines:
            self.lines[trial_id] = TrialLine(trial_id, task, variant, seed)
        return self.lines[trial_id]

    def started(self, trial_id: str, task: str, variant: str, seed: int) -> None:
        line = self._line(trial_id, task, variant, seed)
        line.status, line.updated = "running", time.time()
        self._emit(line, "started")

    def result(self, trial_id: str, task: str, variant: str, seed: int, step: Optional[int], metric: str) -> None:
        line = self._line(trial_id, task, variant, seed)
        line.step, line.metric, line.updated = step, metric or line.metric, time.time()
        if line.status == "pending":
            line.status = "running"
        self._refresh()

    def retrying(self, trial_id: str, task: str, variant: str, seed: int) -> None:
        line = self._line(trial_id, task, variant, seed)
        line.status, line.updated = "retrying", time.time()
        self._emit(line, "failed, retrying")

    def finished(self, trial_id: str, task: str, variant: str, seed: int, status: str, metric: str = "") -> None:
        line = self._line(trial_id, task, variant, seed)
        if line.status in ("ok", "failed", "diverged", "stopped"):
            return
        line.status, line.metric, line.updated = status, metric or line.metric, time.time()
        self.bar.advance(self.bar_task)
        self._emit(line, status)

    def _emit(self, line: TrialLine, what: str) -> None:
        if self.interactive:
            self._refresh()
            return
        done = int(self.bar.tasks[0].completed)
        total = int(self.bar.tasks[0].total or 0)
        extra = f"  {line.metric}" if line.metric and what not in ("started",) else ""
        self.console.print(f"[{done}/{total}] {line.trial_id} {line.task} {line.variant} seed={line.seed}: "
                           f"[{STYLE.get(line.status, '')}]{what}[/]{extra}", highlight=False)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(title=self.title or None, expand=False)
        for col in ("trial", "task", "variant", "seed", "status", "step", "latest"):
            table.add_column(col)
        order = {"running": 0, "retrying": 0, "failed": 1}
        lines = sorted(self.lines.values(), key=lambda l: (order.get(l.status, 2), -l.updated))
        for line in lines[:MAX_ROWS]:
            table.add_row(line.trial_id, line.task, line.variant, str(line.seed),
                          f"[{STYLE.get(line.status, '')}]{line.status}[/]",
                          "" if line.step is None else str(line.step), line.metric)
        if len(lines) > MAX_ROWS:
            table.caption = f"... and {len(lines) - MAX_ROWS} more"
        return Group(table, self.bar)
