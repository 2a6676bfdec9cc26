"""Launching `fpr-sweep run` and `eval`: the checks, the session opened once, then the work.

``run`` opens a ``RunSession`` (session.py) of a validated plan in this order, each refusal a
UserError (exit 2) before any trial, and a sweep folder this run created removed again: a clean
tree (when required), a Ray address that answers, the size guard, the sweep folder, a tracking
store that answers, the sweep's lock, the stored spec (a changed spec, or trials of another spec in
the folder, refused unless --extend), then sweep.json. The driver (driver.py) runs the session;
the ``SweepOutcome`` it returns carries everything the CLI prints. ``evaluate`` does the same for
`eval` (the lock, the sweep's tracker, Ray), ``log_report`` for `report`'s MLflow artifacts.

No Ray import at module level: the checks run first, in seconds, and a local Ray is then imported
on loopback (``import_ray_on_loopback``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from rich.console import Console

from orchestrator.console import shown_path
from orchestrator.run import record
from orchestrator.run.lock import SweepLock
from orchestrator.run.session import RunOptions, RunSession, SweepOutcome
from orchestrator.store import parquet, store_address
from orchestrator.store.space import DiskFull, failed_path, is_disk_full
from orchestrator.sweep.errors import GpuUnavailable, LayoutError, LockHeld, SpecChanged, SweepError, UserError
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import SweepPlan
from orchestrator.sweep.spec import SweepSpec, load_spec


# ---------------------------------------------------------------- run

def run(plan: SweepPlan, opts: RunOptions, console: Console, err_console: Console) -> SweepOutcome:
    """Run (or resume) the planned sweep: open its session (refusals raise UserError, leaving no
    folder this run created), run it on Ray Tune (driver.py), and read back what the summary shows."""
    spec = plan.spec
    check_clean_tree(opts.require_clean or spec.require_clean, err_console)
    from orchestrator.run.preflight import check_address

    check_address(opts.address or os.environ.get("RAY_ADDRESS"))  # before the slow imports: seconds, not minutes
    import_ray_on_loopback(opts.address, opts.own_process)
    from orchestrator.run import driver
    from orchestrator.run.ray_session import exit_fenced

    driver.check_size(plan, opts.yes)  # before anything is written or started
    try:
        sweep_dir = SweepDir.inside(opts.results_dir or spec.results_dir, spec.name, plan.smoke)
    except LayoutError as e:
        raise SweepError(str(e)) from None
    uri = opts.tracking_uri or spec.tracking_uri or store_address.default_tracking_uri(sweep_dir.root)
    store_address.check_reachable(uri)
    new_dir = first_missing(sweep_dir.root)
    lock = SweepLock(sweep_dir, force=opts.force, on_lost=lambda _holder: exit_fenced(lock.lost_message()))
    try:
        with _disk_full_refused(sweep_dir):
            sweep_dir.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            if lock.took_over is not None:
                err_console.print(f"[yellow]took over the lock of {lock.took_over.describe()}[/]", highlight=False)
            extended_from = record.check_spec(spec, sweep_dir, opts.extend)
            check_pooling(spec, sweep_dir, opts.extend, extended_from)
            with _disk_full_refused(sweep_dir):
                info = record.write_record(sweep_dir, spec, plan.path.read_text(), plan.path, uri, plan.smoke,
                                           extended_from)
            session = RunSession(plan, opts, sweep_dir, uri, lock, info["sweep_id"])
            outcome = driver.run_sweep(session, console)
        finally:
            lock.release()
    except GpuUnavailable as e:  # refused before its first trial
        _remove(new_dir)
        raise GpuUnavailable(str(e) + cpu_profile_hint(plan.path)) from None
    except (SweepError, store_address.TrackingError, SpecChanged, LockHeld):
        _remove(new_dir)  # with the MLflow store this run created in it
        raise
    if outcome.results_path is not None and outcome.results_path.exists():
        outcome.accuracy = parquet.accuracy_table(sweep_dir)
    return outcome


def _remove(new_dir: Optional[Path]) -> None:
    if new_dir is not None:
        shutil.rmtree(new_dir, ignore_errors=True)


@contextlib.contextmanager
def _disk_full_refused(sweep_dir: SweepDir) -> Iterator[None]:
    """A full disk before any trial refuses the run (SweepError naming the full path)."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise SweepError(str(e if isinstance(e, DiskFull) else DiskFull(failed_path(e, sweep_dir.root), 0))) from None


def check_pooling(spec: SweepSpec, sweep_dir: SweepDir, extend: bool, extended_from: Optional[str]) -> None:
    """Refuse to pool trials of two specs, judged from the trial files themselves (each row carries
    its spec hash): sweep.json may be gone or restored from elsewhere. Hashes the folder's history
    records (earlier --extend runs) count as this sweep's."""
    known = ({spec.spec_hash(), extended_from}
             | {h.get("spec_hash") for h in record.read_info(sweep_dir).get("history", [])})
    with parquet.read_only():
        foreign = {h: n for h, n in parquet.spec_hashes(sweep_dir).items() if h and h not in known}
    if foreign and not extend:
        shown = ", ".join(f"{n} trial{'s' if n > 1 else ''} of spec hash {h}" for h, n in sorted(foreign.items()))
        raise SpecChanged(f"{sweep_dir.trials} holds {shown}, not of this spec (hash {spec.spec_hash()}), "
                          f"and {sweep_dir.info.name} does not record them. Trials of two specs must not "
                          "pool under one name: give the changed spec a new `name`, or pass --results-dir to run "
                          "it elsewhere; --extend adds its trials to this sweep on purpose.")


def first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (what a refused run must remove)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def cpu_profile_hint(spec_path: Path) -> str:
    from orchestrator.run.preflight import cpu_profile_for

    profile = cpu_profile_for(spec_path)
    if profile is None:
        return " To train on CPU instead, set resources.gpu: 0."
    return f" Without GPUs, run the study's CPU profile instead: fpr-sweep run {shown_path(profile)}"


def check_clean_tree(required: bool, err_console: Console) -> None:
    """Rows record the git commit they ran from; from a dirty tree that commit is not the code that
    ran. Refuse (UserError, before anything is created) when required, else warn loudly."""
    from orchestrator.store import provenance

    changes = provenance.uncommitted_changes()
    if not changes:
        return
    shown = "\n  ".join(changes[:10]) + (f"\n  ... and {len(changes) - 10} more" if len(changes) > 10 else "")
    what = f"the code in {provenance.REPO_DIR} is not a clean git commit:\n  {shown}\n"
    if required:
        raise UserError(what + "--require-clean (or require_clean: true in the spec): commit or stash the changes "
                        "first.")
    err_console.print(f"[bold yellow]warning: {what}every row will record git_commit '...+dirty', a state of the "
                      "code that no commit holds. Commit first for results others can reproduce "
                      "(--require-clean refuses to start from a dirty tree).[/]", highlight=False, soft_wrap=True)


LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray_on_loopback(address: Optional[str], own_process: bool) -> None:
    """A local Ray (no --address, no $RAY_ADDRESS) serves this machine only, so every one of its
    processes should listen on 127.0.0.1. Left alone, Ray binds the address other hosts reach
    this one by: its GCS and raylets, its agents' HTTP servers, and the dashboard's and
    autoscaler's Prometheus metrics servers (on 0.0.0.0). Ray keeps to loopback where multi-node
    support is off, as on macOS and Windows: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (ray
    _private/services.py, ``get_node_ip_address``). Ray reads it once, at import, so Ray is imported
    here (through ray_session.py) with it set to 0, and the variable is put back at once: no child
    process inherits it (a ``ray start`` that inherited it would refuse to join a cluster). Left
    alone when the user set it, when Ray is loaded already, and unless ``own_process``: this process
    is `fpr-sweep` itself rather than a caller's (a test's CliRunner), so what Ray reads is ours to set."""
    if (not own_process or address or os.environ.get("RAY_ADDRESS") or "ray" in sys.modules
            or LOCAL_ONLY_VAR in os.environ):
        return
    os.environ[LOCAL_ONLY_VAR] = "0"
    try:
        import orchestrator.run.ray_session  # noqa: F401  (ray._private.ray_constants reads the variable now)
    finally:
        del os.environ[LOCAL_ONLY_VAR]


# ---------------------------------------------------------------- a dry run, destinations

@dataclass(frozen=True)
class Destinations:
    """Where a run of a spec writes rows, models and tracking."""

    root: Path
    tracking_uri: str
    keep_models: str

    @property
    def outside_cwd(self) -> bool:
        try:
            self.root.relative_to(Path.cwd())
            return False
        except ValueError:
            return True

    @property
    def remote(self) -> bool:
        return not self.tracking_uri.startswith(("sqlite:", "file:", "/"))


def destinations(spec: SweepSpec, results_dir: Optional[str], smoke: bool) -> Destinations:
    """Where a run of ``spec`` writes (issue 33): said before anything runs."""
    root = Path(os.path.abspath(SweepDir.under(results_dir or spec.results_dir, spec.name, smoke).root))
    return Destinations(root, spec.tracking_uri or store_address.default_tracking_uri(root), spec.keep_models)


@dataclass(frozen=True)
class Preview:
    """What `run --dry-run` shows besides the plan: the trials the sweep's folder holds already
    (trial_id -> status) and where a run writes."""

    done: dict[str, str]
    destinations: Destinations


def preview(plan: SweepPlan, results_dir: Optional[str]) -> Preview:
    """`run --dry-run`: reads only (moves and rewrites nothing)."""
    root = SweepDir.under(results_dir or plan.spec.results_dir, plan.spec.name, plan.smoke).root
    done: dict[str, str] = {}
    if root.is_dir():
        with parquet.read_only():
            done = parquet.finished_statuses(root)
    return Preview(done, destinations(plan.spec, results_dir, plan.smoke))


@dataclass(frozen=True)
class Validated:
    """What `validate` says of a plan besides its size: a memory warning (passed with --yes) and
    where a run writes."""

    memory_warning: Optional[str]
    destinations: Destinations


def validate(plan: SweepPlan, yes: bool) -> Validated:
    """`validate`: the plan's largest trial must fit in memory (DoesNotFit, unless ``yes``)."""
    from orchestrator.run.memory import check_fits

    return Validated(check_fits(plan, yes), destinations(plan.spec, None, False))


# ---------------------------------------------------------------- eval and report

@contextlib.contextmanager
def holding(sweep_dir: SweepDir) -> Iterator[SweepLock]:
    """The sweep's lock for a command that writes to a finished sweep (`eval`); LockHeld naming the
    driver when one is running it."""
    lock = SweepLock(sweep_dir)
    try:
        lock.acquire()
    except LockHeld as e:
        raise LockHeld(f"{e} `fpr-sweep eval` writes the sweep's rows and MLflow runs: run it once the driver has "
                       "ended.") from None
    try:
        yield lock
    finally:
        lock.release()


def attach_tracker(sweep_dir: SweepDir, fence: Optional[Callable[[], None]] = None) -> Any:
    """The sweep's tracker without reopening its runs (``eval``, ``report``): the experiment of this
    folder's sweep id, in the folder's own store; ``fence``: the check of the sweep lock the command
    holds. TrackingError when the store does not answer."""
    from orchestrator.store import tracking
    from orchestrator.store.ui import tracking_uri_of

    uri = tracking_uri_of(sweep_dir.root)
    store_address.check_reachable(uri)
    return tracking.SweepTracker(uri, sweep_dir.name, sweep_dir.root, {},
                                 sweep_id=record.read_info(sweep_dir).get("sweep_id"), reopen=False, fence=fence)


def trial_resources(sweep_dir: SweepDir) -> dict[str, float]:
    """Ray resources of one trial as the sweep's spec asked for them (1 CPU without a spec copy)."""
    if not sweep_dir.spec_copy.exists():
        return {"cpu": 1.0, "gpu": 0.0}
    return load_spec(sweep_dir.spec_copy).resources.model_dump()


def evaluate(sweep_dir: SweepDir, request: Any, console: Console, err_console: Console,
             own_process: bool = False) -> Optional[Any]:
    """`fpr-sweep eval`: plan the (trial, split, protocol) jobs ``request`` asks for (reeval.py),
    then hold the sweep, open its tracker, join or start Ray and run them; None when nothing is left
    to evaluate. Each refusal is a UserError (EvalError, LockHeld, TrackingError, SweepError)."""
    from orchestrator.run import reeval

    jobs, skipped = reeval.plan_request(sweep_dir, request)
    for tid, why in sorted(skipped.items()):
        console.print(f"skip {tid}: {why}", highlight=False)
    if not jobs:
        console.print("nothing to evaluate", highlight=False)
        return None
    console.print(f"{len(jobs)} evaluation tasks to run; opening the sweep's MLflow store and starting Ray",
                  highlight=False)
    with holding(sweep_dir) as lock:  # eval rewrites rows and sends to the sweep's spool: one writer
        import_ray_on_loopback(request.address, own_process)
        from orchestrator.run import ray_session
        from orchestrator.run.driver import log_sweep_outcome

        tracker = attach_tracker(sweep_dir, fence=lock.check)
        ray_session.quiet_tune()
        ray_session.ensure_ray(request.address, console)
        outcome = reeval.run_eval(sweep_dir, jobs, tracker, trial_resources(sweep_dir), console, request.n_eval)
        parquet.collect(sweep_dir)
        log_sweep_outcome(tracker, sweep_dir)
        problem = tracker.close()
        if problem:
            err_console.print(f"[bold red]MLflow incomplete:[/] {problem}", highlight=False, soft_wrap=True)
    return outcome


def log_report(sweep_dir: SweepDir, err_console: Console) -> None:
    """The report and its plots as artifacts of the sweep's MLflow run, when the store answers and
    no driver runs the sweep (its spool is the driver's): else a warning, never an error."""
    from orchestrator.store.ui import tracking_uri_of

    if not store_address.store_exists(tracking_uri_of(sweep_dir.root)):  # results copied without their store
        return
    lock = SweepLock(sweep_dir)
    try:  # the spool is the running driver's: write to it only while holding the sweep
        lock.acquire()
    except (LockHeld, OSError) as e:
        why = "a driver is running this sweep" if isinstance(e, LockHeld) else f"cannot take its lock ({e})"
        err_console.print(f"[yellow]warning:[/] report not logged to MLflow: {why}; run `fpr-sweep report` "
                          "again once it has ended.", highlight=False, soft_wrap=True)
        return
    try:
        try:
            tracker = attach_tracker(sweep_dir, fence=lock.check)
        except store_address.TrackingError as e:
            err_console.print(f"[yellow]warning:[/] report not logged to MLflow: {e}", highlight=False)
            return
        tracker.log_sweep_files([sweep_dir.report])
        tracker.log_sweep_files(sorted(sweep_dir.root.glob("*.png")) + sorted(sweep_dir.root.glob("*.pdf")), "plots")
        problem = tracker.close()
        if problem:
            err_console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    finally:
        lock.release()

