"""The transport under SweepTracker: MLflow writes as operations in an on-disk spool, sent by one
background thread, so the Tune loop never waits on the network and an outage loses nothing.

``Spool`` appends each operation as one JSON line to ``<sweep>/tracking/spool.jsonl`` (the
producer: Tune's callback thread and the main thread) and records in ``acked`` how far the sender
got. ``Sender`` reads the spool in order and applies each operation with the MLflow client; a
transient failure (server down, timeout, 5xx, a locked SQLite file) is retried with backoff until it
succeeds, a permanent one (4xx: a bad value) is dropped with a warning. A driver that dies leaves
the unsent tail in the spool; the next driver sends it first.

Replays are idempotent, so "at least once" delivery stores every point exactly once: metric points
carry the timestamp they were logged with (MLflow's SQL store keeps one row per (run, key,
timestamp, step, value)), runs are found by tag before being created, tags and params are set to
the same values, artifacts overwrite the same path.

The sender lets operations gather for ``GATHER_S`` before it sends them, and sends the metric
points of one trial that arrived meanwhile in one ``log_batch``: one request (or SQLite
transaction) per trial and second instead of one per report. A run of merged points is acked once
all of it is sent, so a crash re-sends the run (idempotent) rather than skipping part of it.

Operations are plain dicts ``{"seq", "op", "trial", ...}``; ``trial`` is a trial id, or
``PARENT`` for the sweep's parent run. New kinds are added with ``@operation("kind")``.

A spool that cannot lose silently (issue 33): each line carries the CRC-32 of its operation
(``crc``), and paths in operations are relative to the sweep folder (a folder moved with writes
pending still sends them). A line that is cut short or fails its checksum is dropped and reported
(``Spool.torn``); what it held is rebuilt after the run from the rows and models on disk
(``SweepTracker.reconcile``).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from orchestrator.sweep.layout import SweepDir, SweepPath
from orchestrator.sweep.errors import LockLost

SPOOL_FILE = "spool.jsonl"
ACKED_FILE = "acked"
STEPS_FILE = "steps.json"
FILES_DIR = "files"
PARENT = "__sweep__"
"""The ``trial`` of operations on the sweep's parent run."""
GATHER_S = 2.0
"""How long the sender lets operations gather before sending them (``drain`` and ``stop`` cut it
short). Two trials reporting every 0.27 s (bench_orchestration's 1000-step trials) made 320
``log_batch`` calls, 2.6 s of the driver's CPU, on a core the trials share."""
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits between retries of a transient failure (the last one repeats)."""
SLOW_ANSWER_S = 2.0
"""An answer slower than this, or none within the client's timeout, marks the store as slow
rather than unreachable in what the user is told at the end of a run."""

Apply = Callable[["Sender", dict[str, Any]], None]
OPERATIONS: dict[str, Apply] = {}
"""op kind -> how the sender applies it (registered below and in tracking.py)."""


def operation(kind: str) -> Callable[[Apply], Apply]:
    """Register how the sender applies operations of ``kind``."""
    def register(fn: Apply) -> Apply:
        OPERATIONS[kind] = fn
        return fn
    return register


class PermanentError(RuntimeError):
    """The tracking store refused an operation for good (retrying cannot help)."""


class Spool:
    """The append-only operation log of one sweep, and how far it has been sent."""

    def __init__(self, sweep_dir: SweepPath) -> None:
        self.dir = SweepDir.of(sweep_dir).spool
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SPOOL_FILE
        self._lock = threading.Lock()
        self.acked = self._read_acked()
        self._end_torn_line()
        self.ops = self._read_ops()
        self.next_seq = max([self.acked] + [op["seq"] for op in self.ops]) + 1
        self.steps: dict[str, dict[str, int]] = self._read_steps()
        self.root = self.dir.parent
        """The sweep folder: relative paths in operations are relative to it."""
        self.fence: Callable[[], None] = lambda: None
        """Raises LockLost once another driver holds the sweep (run/lock.py): checked before
        every append, ack and compaction, and by the sender before every send."""

    # ---------------------------------------------------------------- reading back
    def _read_acked(self) -> int:
        try:
            return int((self.dir / ACKED_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _end_torn_line(self) -> None:
        """A line cut short (a crash or a full disk mid-append) is ended, so the next append starts
        a line of its own instead of joining the broken one."""
        try:
            with open(self.path, "rb+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    f.write(b"\n")
        except FileNotFoundError:
            pass

    def _read_ops(self) -> list[dict[str, Any]]:
        """Every whole operation line whose checksum holds; ``torn`` counts the lines dropped (cut
        short by a crash, a full disk or a truncation, or changed since they were written)."""
        out = []
        self.torn = 0
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    op = _parse(line)
                    if op is None:
                        self.torn += 1
                    else:
                        out.append(op)
        except FileNotFoundError:
            pass
        return out

    def torn_note(self) -> Optional[str]:
        """One line for the user when lines were dropped, else None."""
        if not self.torn:
            return None
        lines = f"{self.torn} line was" if self.torn == 1 else f"{self.torn} lines were"
        return (f"{self.path}: {lines} cut short or failed the checksum, and dropped; the trials' MLflow runs "
                "are rebuilt from the rows and models on disk at the end of this run.")

    def _read_steps(self) -> dict[str, dict[str, int]]:
        """Highest step logged per (trial, metric): saved at the last compaction, plus the spool."""
        try:
            steps = json.loads((self.dir / STEPS_FILE).read_text())
        except (OSError, ValueError):
            steps = {}
        for op in self.ops:
            if op["op"] == "metrics":
                mine = steps.setdefault(op["trial"], {})
                for key, _value, _ts, step in op["metrics"]:
                    mine[key] = max(mine.get(key, step), step)
        return steps

    def pending(self) -> list[dict[str, Any]]:
        """Operations appended but not yet sent, in order."""
        with self._lock:
            return [op for op in self.ops if op["seq"] > self.acked]

    # ---------------------------------------------------------------- writing
    def append(self, op: dict[str, Any]) -> dict[str, Any]:
        """Give ``op`` the next sequence number and append it (one write of one line)."""
        self.fence()
        with self._lock:
            op = {"seq": self.next_seq, **op}
            body = json.dumps(op, separators=(",", ":"), allow_nan=False)
            line = f'{body[:-1]},"crc":{zlib.crc32(body.encode())}}}\n'
            self.dir.mkdir(parents=True, exist_ok=True)  # removed by hand mid-run: start it again
            with open(self.path, "a") as f:
                f.write(line)
            self.next_seq += 1
            self.ops.append(op)
        return op

    def new_steps(self, trial: str, metrics: list[list[Any]]) -> list[list[Any]]:
        """The points whose step is past what was already logged for (trial, key): a resumed
        trial re-reports steps between its checkpoint and the kill, and a point is logged once."""
        with self._lock:
            mine = self.steps.setdefault(trial, {})
            fresh = [m for m in metrics if m[3] > mine.get(m[0], -1)]
            for key, _value, _ts, step in fresh:
                mine[key] = max(mine.get(key, -1), step)
        return fresh

    def stash(self, source: Path) -> str:
        """Copy a file into the spool (it must outlive its temp dir until sent); its spool path."""
        files = self.dir / FILES_DIR
        files.mkdir(exist_ok=True)
        target = files / f"{uuid.uuid4().hex[:12]}-{Path(source).name}"
        shutil.copyfile(source, target)
        return str(target.relative_to(self.dir))

    def ack(self, seq: int) -> None:
        self.fence()
        with self._lock:
            self.acked = max(self.acked, seq)
            try:
                _write_atomic(self.dir / ACKED_FILE, str(self.acked))
            except OSError:  # a full disk: the next run re-sends from the last recorded ack (idempotent)
                pass

    def compact(self) -> None:
        """Everything sent: keep only the step ledger, drop the log and stashed files."""
        self.fence()
        with self._lock:
            if any(op["seq"] > self.acked for op in self.ops):
                return
            _write_atomic(self.dir / STEPS_FILE, json.dumps(self.steps))
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.dir / FILES_DIR, ignore_errors=True)
            self.ops = []


def _parse(line: bytes) -> Optional[dict[str, Any]]:
    """An operation line, or None when it is not whole JSON or fails its checksum (lines written
    before checksums carry none and are taken as they are)."""
    try:
        op = json.loads(line)
    except ValueError:
        return None
    if not isinstance(op, dict) or not isinstance(op.get("seq"), int):
        return None
    crc = op.pop("crc", None)
    if crc is not None:
        body = json.dumps(op, separators=(",", ":"), allow_nan=False)
        if zlib.crc32(body.encode()) != crc:
            return None
    return op


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Sender:
    """The background thread that applies spooled operations in order, retrying transient failures."""

    def __init__(self, spool: Spool, client: Any, resolve_run: Callable[[dict[str, Any]], str],
                 is_transient: Callable[[BaseException], bool]) -> None:
        self.spool = spool
        self.client = client
        self.resolve_run = resolve_run
        self.is_transient = is_transient
        self.warnings: list[str] = []
        self.down_since: Optional[float] = None
        self.last_error = ""
        self.sent = 0
        self.timeouts = 0
        """Writes the store did not answer within the client's timeout (each is retried)."""
        self.slowest_s = 0.0
        """The longest a write the store accepted took."""
        self.timed_out_last = False
        self.fenced = False
        """True once the sender stopped because another driver took the sweep over."""
        self._wake = threading.Condition()
        self._stop = False
        self._hurry = False  # someone waits in drain(): send without gathering
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def run_id(self, op: dict[str, Any]) -> str:
        """The MLflow run of the operation's trial (found or created on first use)."""
        return self.resolve_run(op)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.spool.pending():
                    self._wake.wait(timeout=1.0)
                gather_until = time.monotonic() + GATHER_S
                while not self._stop and not self._hurry and time.monotonic() < gather_until:
                    self._wake.wait(timeout=gather_until - time.monotonic())
                if self._stop:
                    return
            for ops, last_seq in _batches(self.spool.pending()):
                try:
                    self.spool.fence()  # another driver holds the sweep: it sends this spool now
                    if not all(self._deliver(op) for op in ops):
                        return
                    self.spool.ack(last_seq)
                except LockLost:
                    self.fenced = True
                    return
                self.sent += sum(len(op.get("parts", [op])) for op in ops)

    def _deliver(self, op: dict[str, Any]) -> bool:
        """Apply one operation, retrying while the store is unreachable; False once stopped. Merged
        metric points the store refuses for good are sent again report by report, so a bad value
        costs only its own report."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                OPERATIONS[op["op"]](self, op)
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            except Exception as e:  # the client raises many types: classify, never crash the thread
                if not self.is_transient(e):
                    if len(op.get("parts", ())) > 1:
                        return all(self._deliver(part) for part in op["parts"])
                    self.warnings.append(f"MLflow refused {op['op']} for {op['trial']}: {_first_line(e)}")
                    break
                self.timed_out_last = is_timeout(e)
                self.timeouts += self.timed_out_last
                self.last_error = why_unsent(e)
                self.down_since = self.down_since or time.time()
                with self._wake:
                    if self._stop:
                        return False
                    self._wake.wait(timeout=BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                    if self._stop:
                        return False
                attempt += 1
                continue
            break
        self.down_since = None
        self.timed_out_last = False
        return True

    def is_slow(self) -> bool:
        """The store answers, too slowly: its last failure was a timeout, or it is not failing and
        answered slower than SLOW_ANSWER_S (a refused connection is unreachable, not slow)."""
        if self.down_since is not None:
            return self.timed_out_last
        return self.timeouts > 0 or self.slowest_s > SLOW_ANSWER_S

    def unsent_note(self, uri: str, pending: int) -> str:
        """What the user is told when writes are left in the spool at the end of a run (one line)."""
        kept = (f"The results table does not depend on it and is complete. {pending} MLflow writes (metrics, "
                f"tags, artifacts, run ends) are kept in {self.spool.path} and are sent, each exactly once, by the "
                "next `fpr-sweep run` of this spec")
        if self.is_slow():
            how = (f"{self.timeouts} requests got no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s "
                   "(MLFLOW_HTTP_REQUEST_TIMEOUT) and were retried" if self.timeouts
                   else f"writes took up to {self.slowest_s:.1f} s")
            return (f"The MLflow tracking server {uri} is slow: {how}, and it had not taken every write when this "
                    f"run ended. {kept}.")
        since = (time.strftime("%H:%M:%S", time.localtime(self.down_since)) if self.down_since
                 else "the end of the run")
        return (f"The MLflow tracking store {uri} has not accepted writes since {since} "
                f"({self.last_error or 'no answer'}). {kept} once the store is reachable again.")

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled operation is sent (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        self._hurry = True
        try:
            while self.spool.pending():
                if time.monotonic() > deadline or not self._thread.is_alive():
                    return False
                self.notify()
                time.sleep(0.05)
            return True
        finally:
            self._hurry = False

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=30)


def why_unsent(e: BaseException) -> str:
    """Why a write did not reach the store, as the user is told it: a full disk or a timeout is
    called that (not an errno or a stack of wrapped HTTP errors), anything else by its first line."""
    from orchestrator.store.space import is_disk_full

    if is_disk_full(e):
        return "its disk is full"
    return "no answer in time" if is_timeout(e) else _first_line(e)


def is_timeout(e: BaseException) -> bool:
    """A request the store did not answer within the client's timeout (requests' Timeout, which
    MLflow's client wraps in an MlflowException)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ or "timeout exception" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _batches(ops: list[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """The pending operations as (operations to apply, seq to ack once all are applied): each run
    of consecutive metric operations becomes one merged operation per trial (its reports in
    ``parts``), every other operation goes alone."""
    for is_metrics, run in itertools.groupby(ops, key=lambda op: op["op"] == "metrics"):
        run = list(run)
        if not is_metrics:
            yield from (([op], op["seq"]) for op in run)
            continue
        merged: dict[str, dict[str, Any]] = {}
        for op in run:
            into = merged.setdefault(op["trial"], {"seq": op["seq"], "op": "metrics", "trial": op["trial"],
                                                   "metrics": [], "parts": []})
            into["metrics"].extend(op["metrics"])
            into["parts"].append(op)
        yield list(merged.values()), run[-1]["seq"]
