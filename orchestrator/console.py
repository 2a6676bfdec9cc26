"""What the terminal shows (rich): a sweep's live progress, the commands' tables (a plan, a run's
summary, `status`), and the Ray/Tune messages we keep off the terminal.

The progress is fed by the driver's Tune callback; it knows nothing of Ray. Every trial event (start, retry, end) is
printed once as a plain line, so the scrollback is a clean log. On a terminal a small live region
under those lines shows the trials running now, the counts (done, running, pending, failed) and an
ETA; it is cut to the terminal's height, so rich can always redraw it in place (a region taller
than the screen leaves torn copies in the scrollback). Ray's own log handlers are pointed at the
live console while it runs, for the same reason. Long variant labels are shown as short codes
(v1, v2...) with a legend line, so the table reads at 80 columns.
"""
from __future__ import annotations

import csv
import itertools
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fpr_core.split_names import ID_SPLIT, parse_split

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


# ---------------------------------------------------------------- the commands' tables
# What `run` (its plan, its summary), `validate` and `status` print, from plain data the rooms
# return: these functions read no file.

PLAN_SAMPLE = 20
"""Trials `--dry-run` shows in its table; `--all FILE` writes every one."""
PLAN_COLUMNS = ("#", "trial", "task", "variant", "seed", "train", "ood sizes", "samples", "done")


def _plan_row(i: int, c: Any, samples: int, done: dict[str, str]) -> tuple[str, ...]:
    return (str(i), c.cell_id, c.task, c.variant, str(c.seed), str(c.train_size),
            ",".join(map(str, c.ood_sizes)), str(samples), done.get(c.cell_id, ""))


def print_plan(console: Console, plan: Any, done: dict[str, str], all_path: Optional[Path]) -> None:
    """A sweep plan (sweep/plan.py): the first PLAN_SAMPLE trials, a summary per task and the
    totals; ``done``: trial_id -> status of the trials its folder holds already. With ``all_path``
    every trial is written as CSV (as the grid is walked, so a 10^6-cell grid never sits in memory)."""
    spec, smoke, grid = plan.spec, plan.smoke, plan.grid
    samples = spec.search.num_samples if spec.search else 1
    shown = min(PLAN_SAMPLE, len(grid))
    table = Table(title=f"{spec.name}{' (smoke)' if smoke else ''}: trials"
                        + (f" (first {shown} of {len(grid)})" if shown < len(grid) else ""))
    for col in PLAN_COLUMNS:
        table.add_column(col)
    for i, c in enumerate(itertools.islice(grid.cells(), shown), 1):
        table.add_row(*_plan_row(i, c, samples, done))
    console.print(table)
    if all_path is not None:
        with open(all_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PLAN_COLUMNS)
            writer.writerows(_plan_row(i, c, samples, done) for i, c in enumerate(grid.cells(), 1))
        console.print(f"all {len(grid)} trials written to {all_path}", highlight=False)
    elif shown < len(grid):
        console.print(f"... {len(grid) - shown} more (--all FILE writes every trial as CSV)", highlight=False)
    summary = Table(title="per task")
    for col in ("task", "train", "ood sizes", "grid cells", "seeds", "trials"):
        summary.add_column(col)
    for t in grid.tasks:
        summary.add_row(t.task, str(t.train_size), ",".join(map(str, t.ood_sizes)), str(t.count() // len(t.seeds)),
                        str(len(t.seeds)), str(t.count() * samples))
    console.print(summary)
    per_task = [t.count() // len(t.seeds) for t in grid.tasks]
    seeds = {len(t.seeds) for t in grid.tasks}
    grid_text = (f"{per_task[0]} grid cells x {len(spec.tasks)} tasks" if len(set(per_task)) == 1
                 else f"({' + '.join(map(str, per_task))}) grid cells over {len(spec.tasks)} tasks")
    seeds_text = f"{seeds.pop()} seeds" if len(seeds) == 1 else "seeds per task"
    finished = ""
    if done:  # a folder's trials may be another spec's (an edited spec): say how many are this one's
        mine = sum(1 for c in grid.cells() if c.cell_id in done)
        other = len(done) - mine
        finished = f"; {mine} of them finished" + (f" ({other} finished trials in the sweep folder are not this "
                                                   "spec's)" if other else "")
    console.print(f"{grid_text} x {seeds_text} x {samples} samples = {plan.trial_count} trials{finished}",
                  highlight=False)


def print_destinations(console: Console, d: Any) -> None:
    """Where a run writes rows, models and tracking (run/launch.py ``Destinations``, issue 33): a
    spec that writes outside the working tree, or to a remote tracker, says so before anything runs."""
    where = "  (outside the working tree)" if d.outside_cwd else ""
    models = f"{d.root / 'models'}" if d.keep_models != "none" else "none kept (keep_models: none)"
    console.print(f"rows:     {d.root / 'trials'}, {d.root / 'results.parquet'}{where}\n"
                  f"models:   {models}\n"
                  f"tracking: {d.tracking_uri}" + ("  (a remote tracker: params, metrics and models leave this "
                                                   "machine)" if d.remote else ""), highlight=False, soft_wrap=True)


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (as a user would type it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_outcome(console: Console, err_console: Console, outcome: Any) -> None:
    """The closing summary of a run (run/session.py ``SweepOutcome``): why it stopped, the counts,
    accuracy per task, where the results, models and MLflow runs are, and each failed trial."""
    from fpr_core.saved_model import human_bytes

    if outcome.stopped:
        err_console.print(f"[bold red]stopped:[/] {outcome.stopped}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "no trials finished"
    console.print(f"\ntrials: {counts}" + (f"; {outcome.unfinished} unfinished (interrupted: run the same "
                                           "command again to resume)" if outcome.unfinished else ""),
                  highlight=False)
    if outcome.results_path is not None and outcome.results_path.exists():
        print_accuracy(console, outcome.accuracy)
        console.print(f"results: {outcome.results_path}", highlight=False)
    if outcome.models:
        sizes = sorted(outcome.models.values())
        console.print(f"models:  {len(sizes)} kept in {outcome.sweep_dir.models} ({human_bytes(sum(sizes))}; "
                      f"{human_bytes(sizes[0])}" + (f" to {human_bytes(sizes[-1])}" if sizes[-1] != sizes[0] else "")
                      + " per trial)", highlight=False)
    console.print(f"MLflow:  {outcome.tracking_uri}   (fpr-sweep ui {shlex.quote(shown_path(outcome.sweep_dir.root))})",
                  highlight=False)
    if outcome.tracking_problem:
        err_console.print(f"[bold red]MLflow incomplete:[/] {outcome.tracking_problem}", highlight=False,
                          soft_wrap=True)
    for s in outcome.failures:
        err_console.print(f"[red]failed[/] {s['trial_id']} {s['task']} {s['variant']} seed={s['seed']}: "
                          f"{s['error']}", highlight=False)


def print_accuracy(console: Console, rows: list[dict]) -> None:
    """Per task: exact accuracy and mean loop iterations per variant (mean over seeds) and split."""
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        splits = sorted({r["split"] for r in mine}, key=lambda s: (s != ID_SPLIT, parse_split(s, 0)))
        table = Table(title=f"{task}: exact accuracy / mean loop iterations (mean over seeds)")
        for col in ["variant", *splits]:
            table.add_column(col)
        keyed: dict[str, dict] = {}
        for r in mine:
            keyed.setdefault(r["variant"], {})[r["split"]] = r
        for variant, by_split in sorted(keyed.items()):
            table.add_row(variant, *[_accuracy_cell(by_split.get(s)) for s in splits])
        console.print(table)


def _accuracy_cell(row: Optional[dict]) -> str:
    if not row or row.get("exact_acc") is None:
        return ""
    iters = row.get("iters_mean")
    return f"{100 * row['exact_acc']:.1f}%" + ("" if iters is None else f" / {iters:.0f}")


STATUS_ROWS = 50
"""Trials `status` lists (failed, running and pending first); `--all` lists every one."""
STATE_ORDER = {"failed": 0, "running": 1, "pending": 2, "diverged": 3, "stopped": 4, "ok": 5}


def print_status(console: Console, name: str, states: dict[str, dict], unplanned: int, all_trials: bool) -> None:
    """Every trial of a sweep in one state (run/live.py ``trial_states``): failed, running and
    pending first, the first STATUS_ROWS unless ``all_trials``; then the counts."""
    lines = sorted((STATE_ORDER.get(s["status"], 9), tid, (s["task"], s["variant"], str(s["seed"])), s["status"],
                    (s.get("error") or "")[:80]) for tid, s in states.items())
    counts: dict[str, int] = {}
    for line in lines:
        counts[line[3]] = counts.get(line[3], 0) + 1
    shown = lines if all_trials else lines[:STATUS_ROWS]
    more = "" if len(shown) == len(lines) else f" ({len(shown)} of {len(lines)}; --all lists every one)"
    table = Table(title=f"{name}: trials{more}")
    for col in ("trial", "task", "variant", "seed", "status", "error"):
        table.add_column(col)
    for _, tid, row, state, error in shown:
        table.add_row(tid, *row, state, error)
    console.print(table)
    if unplanned:
        counts["pending"] = counts.get("pending", 0) + unplanned
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials yet", highlight=False)
