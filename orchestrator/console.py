"""Live terminal progress of a sweep (rich), and the Ray/Tune messages we keep off the terminal.

Fed by the driver's Tune callback; knows nothing of Ray. Every trial event (start, retry, end) is
printed once as a plain line, so the scrollback is a clean log. On a terminal a small live region
under those lines shows the trials running now, the counts (done, running, pending, failed) and an
ETA; it is cut to the terminal's height, so rich can always redraw it in place (a region taller
than the screen leaves torn copies in the scrollback). Ray's own log handlers are pointed at the
live console while it runs, for the same reason. Long variant labels are shown as short codes
(v1, v2...) with a legend line, so the table reads at 80 columns.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

STYLE = {"ok": "green", "failed": "red", "diverged": "yellow", "stopped": "yellow", "timed_out": "red",
         "running": "cyan", "pending": "dim", "retrying": "magenta"}
FINAL = ("ok", "failed", "diverged", "stopped", "timed_out")
MAX_ROWS = 20
"""Running trials shown in the live table at most (fewer when the terminal is short)."""
LABEL_WIDTH = 16
"""Variant labels longer than this are shown as a short code with a legend line."""
RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "")
"""Loggers whose stream handlers write through the live console while it runs."""


@dataclass
class TrialLine:
    trial_id: str
    task: str
    variant: str
    seed: int
    status: str = "pending"
    step: Optional[int] = None
    metric: str = ""
    started: float = 0.0
    updated: float = 0.0


class VariantCodes:
    """Short codes (v1, v2, ...) for variant labels too long for an 80-column table, numbered in the
    spec's order (``order``), so a resumed run shows the same code for the same variant; a label
    outside ``order`` gets the next free code when first seen. Legend lines are printed lazily."""

    def __init__(self, order: Iterable[str] = ()) -> None:
        self.codes: dict[str, str] = {}
        self._shown: set[str] = set()
        for variant in dict.fromkeys(order):
            if len(variant) > LABEL_WIDTH:
                self.codes[variant] = f"v{len(self.codes) + 1}"

    def code(self, variant: str) -> tuple[str, bool]:
        """(what to show, whether this label is shown for the first time and needs its legend line)."""
        if len(variant) <= LABEL_WIDTH:
            return variant, False
        if variant not in self.codes:
            self.codes[variant] = f"v{len(self.codes) + 1}"
        first = variant not in self._shown
        self._shown.add(variant)
        return self.codes[variant], first

    def legend(self, variant: str) -> str:
        return f"{self.codes[variant]} = {variant}"


def duration(seconds: float) -> str:
    """'1:02:03' or '2:03'."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SweepProgress:
    """Event lines + a live region of running trials; call ``start``/``stop`` around the Tune run."""

    def __init__(self, console: Console, total: int, already_done: int = 0, title: str = "",
                 variants: Iterable[str] = (), trial_seconds: Optional[float] = None) -> None:
        """``variants``: every variant label in the spec's order (fixes their short codes);
        ``trial_seconds``: the mean wall time of the trials finished before this run (a resume), for
        an ETA before the first trial of this run ends."""
        self.console = console
        self.total = total
        self.already_done = already_done
        self.title = title
        self.lines: dict[str, TrialLine] = {}
        self.codes = VariantCodes(variants)
        self.trial_seconds = trial_seconds
        self._finished_now = 0
        self._begun = time.time()
        self._first_start: Optional[float] = None
        self._restore: list[tuple[logging.StreamHandler, object]] = []
        self.live: Optional[Live] = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._begun = time.time()
        if self.interactive:
            self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2,
                             transient=True, redirect_stdout=True, redirect_stderr=True,
                             vertical_overflow="crop")
            self.live.start()
            self._route_log_handlers()

    def stop(self) -> None:
        if self.live is not None:
            self._unroute_log_handlers()
            self.live.stop()
            self.live = None
        self.console.print(self.summary(), highlight=False, soft_wrap=True)

    def _route_log_handlers(self) -> None:
        """Ray's handlers hold the real stderr; while the live region is up they must write through
        rich's proxy (now sys.stderr), which prints above the region instead of over it."""
        originals = (sys.__stderr__, sys.__stdout__, getattr(self.live, "_restore_stderr", None))
        for name in RAY_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler and handler.stream in originals:
                    self._restore.append((handler, handler.setStream(sys.stderr)))

    def _unroute_log_handlers(self) -> None:
        for handler, stream in self._restore:
            handler.setStream(stream)
        self._restore.clear()

    # ------------------------------------------------------------ events

    def _line(self, trial_id: str, task: str, variant: str, seed: int) -> TrialLine:
        if trial_id not in self.lines:
            self.lines[trial_id] = TrialLine(trial_id, task, variant, seed)
            self._show_variant(variant)
        return self.lines[trial_id]

    def _show_variant(self, variant: str) -> None:
        _, new = self.codes.code(variant)
        if new:
            self.console.print(f"[dim]variant[/] {self.codes.legend(variant)}", highlight=False)

    def started(self, trial_id: str, task: str, variant: str, seed: int) -> None:
        line = self._line(trial_id, task, variant, seed)
        if line.status in FINAL:
            return
        now = time.time()
        line.status, line.started, line.updated = "running", now, now
        self._first_start = self._first_start or now
        self._event(line, "started")

    def result(self, trial_id: str, task: str, variant: str, seed: int, step: Optional[int], metric: str) -> None:
        line = self._line(trial_id, task, variant, seed)
        line.step, line.metric, line.updated = step, metric or line.metric, time.time()
        if line.status == "pending":
            line.status, line.started = "running", line.started or time.time()

    def retrying(self, trial_id: str, task: str, variant: str, seed: int) -> None:
        line = self._line(trial_id, task, variant, seed)
        line.status, line.updated = "retrying", time.time()
        self._event(line, "failed, retrying")

    def finished(self, trial_id: str, task: str, variant: str, seed: int, status: str, metric: str = "") -> None:
        line = self._line(trial_id, task, variant, seed)
        if line.status in FINAL:
            return
        line.status, line.metric, line.updated = status, metric or line.metric, time.time()
        self._finished_now += 1
        self._event(line, status)

    def _event(self, line: TrialLine, what: str) -> None:
        """One permanent line per event: '[3/8] ok  prefix_sums v2 s0 3f9a0c1b2d  acc/ood_64=0.750  41 s'."""
        label, _ = self.codes.code(line.variant)
        extra = ""
        if what in FINAL:
            took = f"  {duration(line.updated - line.started)}" if line.started else ""
            extra = f"  {line.metric}{took}" if line.metric else took
        self.console.print(f"[{self.done}/{self.total}] [{STYLE.get(line.status, '')}]{what:<8}[/] "
                           f"{line.task} {label} s{line.seed} [dim]{line.trial_id}[/]{extra}",
                           highlight=False, soft_wrap=True)

    # ------------------------------------------------------------ counts

    @property
    def done(self) -> int:
        return self.already_done + self._finished_now

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("running", "failed")}
        for line in self.lines.values():
            if line.status in ("running", "retrying"):
                out["running"] += 1
            elif line.status == "failed":
                out["failed"] += 1
        out["pending"] = max(0, self.total - self.done - out["running"])
        return out

    def eta_seconds(self, now: Optional[float] = None) -> Optional[float]:
        """Remaining trials x the mean time between trial ends in this run: steady concurrency makes
        that the rate at which the rest will finish. Before the first end of this run (a resume),
        the earlier trials' mean wall time / the trials running now; else None."""
        now = now or time.time()
        if self._finished_now:
            rate = self._finished_now / max(now - (self._first_start or self._begun), 1e-6)
            return (self.total - self.done) / rate
        running = self.counts()["running"]
        if self.trial_seconds is None or not running:
            return None
        elapsed = min((now - l.started for l in self.lines.values() if l.status == "running" and l.started),
                      default=0.0)
        return max(0.0, self.trial_seconds - elapsed) + (self.total - self.done - running) * self.trial_seconds / running

    def summary(self) -> str:
        c = self.counts()
        eta = self.eta_seconds()
        parts = [f"{self.done}/{self.total} done", f"{c['running']} running", f"{c['pending']} pending"]
        if c["failed"]:
            parts.append(f"[red]{c['failed']} failed[/]")
        parts.append(f"{duration(time.time() - self._begun)} elapsed")
        if self.done < self.total:
            parts.append("ETA " + (f"~{duration(eta)}" if eta is not None else "--"))
        return (f"[bold]{self.title}[/] " if self.title else "") + " · ".join(parts)

    # ------------------------------------------------------------ live region

    def _render(self) -> Group:
        running = sorted((l for l in self.lines.values() if l.status in ("running", "retrying")),
                         key=lambda l: l.started)
        room = max(1, min(MAX_ROWS, self.console.size.height - 7))  # summary (<= 2 lines), header, "more", cursor
        table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
        for col, kw in (("trial", {"style": "dim", "no_wrap": True}), ("task", {"no_wrap": True}),
                        ("variant", {"no_wrap": True}), ("seed", {"justify": "right"}),
                        ("step", {"justify": "right"}), ("for", {"justify": "right"}),
                        ("latest", {"overflow": "ellipsis", "no_wrap": True})):
            table.add_column(col, **kw)
        now = time.time()
        for line in running[:room]:
            status = "" if line.status == "running" else " [magenta](retry)[/]"
            table.add_row(line.trial_id, line.task, self.codes.code(line.variant)[0] + status, str(line.seed),
                          "" if line.step is None else str(line.step), duration(now - line.started),
                          line.metric)
        parts = [Text.from_markup(self.summary(), overflow="fold")]
        if running:
            parts.append(table)
        if len(running) > room:
            parts.append(Text(f"... and {len(running) - room} more running", style="dim"))
        return Group(*parts)


class Heartbeat:
    """Progress while a command waits on long tasks (`fpr-sweep eval`): on a terminal a spinner
    line with ``describe()`` redrawn in place (lines printed meanwhile go above it); in a pipe the
    same text once every ``every_s`` seconds without news. Call ``tick`` often, ``news`` when a
    line about a task was printed."""

    def __init__(self, console: Console, describe: Callable[[], str], every_s: float = 60.0) -> None:
        self.console, self.describe, self.every_s = console, describe, every_s
        self._status = None
        self._last = time.time()

    def __enter__(self) -> "Heartbeat":
        if self.console.is_terminal:
            self._status = self.console.status(self.describe())
            self._status.start()
        self._last = time.time()
        return self

    def tick(self) -> None:
        if self._status is not None:
            self._status.update(self.describe())
        elif time.time() - self._last >= self.every_s:
            self.console.print(self.describe(), highlight=False)
            self._last = time.time()

    def news(self) -> None:
        self._last = time.time()
        self.tick()

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()


# ---------------------------------------------------------------- Ray's messages

class _Drop(logging.Filter):
    """Drops records whose message contains any of ``needles`` (Tune's stop notice: says ours)."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Stop signal received" in message:
            print(STOPPING, file=sys.stderr, flush=True)  # rich's proxy while the live region is up
        return not any(n in message for n in self.needles)


STOPPING = ("stopping: the running trials end and Tune saves its state (their rows so far are kept); "
            "the summary follows")
"""Said once when Ctrl-C or SIGTERM reaches Tune, instead of Tune's own line (its "Press CTRL+C to
skip" would skip the final state save that the same command resumes from)."""

WRONG_ADVICE = {
    # Tune's advice for its own API; `fpr-sweep run` resumes with the same command (we say so).
    "ray.tune.tune": ("Resume experiment with:", "Trials did not complete", "Stop signal received"),
    # Reading the experiment state of trials that never reported: nothing is missing for us.
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
    # "consider reporting results less frequently": on a busy machine the driver's MLflow writes
    # take a second or two; the reporting rate is ours, not something a user can change.
    "ray.tune.utils.util": ("may be a performance bottleneck",),
    # Printed at every local start; the cluster's auth mode is not the user's business here.
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
}
"""Logger name -> messages that give advice which is wrong (or noise) for users of this CLI."""


MLFLOW_NOISE = (
    # Logging a trial's model from code (store/pyfunc_model.py): its predict takes a task batch
    # dict, which MLflow's type-hint validation and input examples do not describe.
    r"Add type hints to the `predict` method",
    r"An input example was not provided",
)
"""MLflow warnings a sweep's user can do nothing about (regular expressions, as warnings.filterwarnings takes)."""


def quiet_ray_messages() -> None:
    """Install the filters for WRONG_ADVICE and MLFLOW_NOISE, and turn off MLflow's download
    progress bars (one per logged model, in the middle of the trial lines); idempotent."""
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not getattr(warnings.showwarning, "drops_mlflow_noise", False):
        # At display, not as a filter: MLflow logs models under its own
        # ``simplefilter("once", UserWarning)`` (utils/annotations.py), which outranks any filter.
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if not any(re.search(pattern, str(message)) for pattern in MLFLOW_NOISE):
                shown(message, category, filename, lineno, file, line)

        showwarning.drops_mlflow_noise = True  # type: ignore[attr-defined]
        warnings.showwarning = showwarning
    for name, needles in WRONG_ADVICE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(*needles))
