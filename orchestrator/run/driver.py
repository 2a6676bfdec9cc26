"""Runs a sweep on Ray Tune (with trainable.py, the only modules importing ray).

``run_sweep`` starts (or joins) Ray, runs one Tuner over the grid's trials (or one Tuner with an
Optuna study per grid cell when the spec has a ``search`` section; see expand.py and
tune_space.py), and on the driver turns every finished trial into MLflow runs and a Parquet rows
file (hub.py). Re-running the same
command resumes: ``Tuner.can_restore`` -> ``Tuner.restore(..., resume_errored=True)``; trials whose
rows file already holds a final status are never trained again.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import ray
from ray import tune
from ray._private import ray_constants
from rich.console import Console
from rich.markup import escape

from orchestrator.console import SweepProgress, quiet_ray_messages
from orchestrator.run import preflight
from orchestrator.run import hub as hubs
from orchestrator.run import tune_space
from orchestrator.run import trust
from orchestrator.run.hub import DriverHub, ForwardingCallback
from orchestrator.run.members import member_views
from orchestrator.run.signals import StopRequests
from orchestrator.run.trainable import CHECKPOINTS_KEPT, fpr_trainable
from orchestrator.store import parquet
from orchestrator.store.rows import SweepMeta
from orchestrator.store.run_info import sweep_summary
from orchestrator.store.schema import FINAL_STATUSES
from orchestrator.store.space import DiskFull, DropDiskFull, is_disk_full
from orchestrator.sweep.expand import Cell, resolve, trial_of_config
from orchestrator.sweep.errors import GpuUnavailable, LayoutError, LockLost, SweepError
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import SweepPlan
from orchestrator.sweep.spec import SweepSpec

if TYPE_CHECKING:  # mlflow loads in the thread that opens the store, not at import
    from orchestrator.store.tracking import SweepTracker


@dataclass
class RunOptions:
    """Command-line knobs of `fpr-sweep run` (each overrides the spec's value when given)."""

    address: Optional[str] = None
    max_concurrent: Optional[int] = None
    tracking_uri: Optional[str] = None
    results_dir: Optional[str] = None
    storage: Optional[str] = None
    yes: bool = False
    """Run a sweep larger than SIZE_GUARD trials without the spec's max_trials."""
    node_timeout_s: float = 1800.0
    """How long to wait for an autoscaler to add the nodes a trial needs (GPUs) before giving up."""


@dataclass
class SweepOutcome:
    """What a run left behind."""

    sweep_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    results_path: Optional[Path] = None
    ray_start_seconds: Optional[float] = None
    models: dict[str, int] = field(default_factory=dict)
    """trial_id -> bytes of its kept model (models/<trial_id>.pt)."""
    tracking_problem: Optional[str] = None
    """Set when MLflow writes are still waiting in the spool at the end (the server was unreachable)."""
    stopped: Optional[str] = None
    """Why the run stopped early: a signal ('SIGTERM received'), 'interrupted', or a full disk."""

    @property
    def exit_code(self) -> int:
        """0 when every trial finished without failing or timing out and MLflow has everything, else 1."""
        return 1 if (self.counts.get("failed", 0) or self.counts.get("timed_out", 0) or self.unfinished or self.tracking_problem
                     or self.stopped) else 0


def sweep_dir_for(plan: SweepPlan, opts: RunOptions) -> Path:
    """results_dir/<sweep>, refused if it resolves outside results_dir (e.g. a symlink elsewhere)."""
    try:
        return SweepDir.inside(opts.results_dir or plan.spec.results_dir, plan.spec.name, plan.smoke).root
    except LayoutError as e:
        raise SweepError(str(e)) from None


# ---------------------------------------------------------------- Ray

def quiet_tune() -> None:
    """Our own progress table replaces Tune's reporter; metric names are checked in spec.py
    (intermediate reports carry training metrics, only the final one the per-split metrics)."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "🏃 View run ... at: http://..."
    quiet_ray_messages()


def drop_disk_full_logs() -> None:
    """Tune logs each failed state save on a full disk with a traceback; the driver reports the
    full disk once instead (filters on Ray's handlers: child loggers' records reach them directly)."""
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, DropDiskFull) for f in handler.filters):
            handler.addFilter(DropDiskFull())


def ensure_ray(address: Optional[str], console: Console) -> Optional[float]:
    """Join a running Ray session, the cluster at ``address`` (or $RAY_ADDRESS), or start a local
    one with every core and no dashboard (no HTTP server). Returns the start-up time in seconds
    when this call started Ray."""
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        preflight.check_address(address)  # ray.init retries an address where nothing answers for minutes
    except preflight.AddressError as e:
        raise SweepError(str(e)) from None
    started = time.perf_counter()
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            raise SweepError(f"--address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]}); "
                             "check the address, and for a token-authenticated cluster set RAY_AUTH_MODE=token "
                             "with its token in ~/.ray/auth_token or $RAY_AUTH_TOKEN.") from None
    else:
        check_ray_temp_dir()
        with ray_processes_in_own_session():
            ray.init(address="local", num_cpus=os.cpu_count(), **common)
    seconds = time.perf_counter() - started
    console.print(f"Ray {'joined ' + address if address else 'started locally'} in {seconds:.1f} s "
                  f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)",
                  highlight=False)
    return seconds


RAY_TEMP_MIN_BYTES = 100 << 20
"""A local Ray writes its session (sockets, logs, the object store's spill files) under its temp
dir: with less free than this it fails to start with a long traceback that never says why."""


def check_ray_temp_dir() -> None:
    """Refuse to start a local Ray on a full temp dir (SweepError saying 'disk full')."""
    from orchestrator.store.space import free_bytes

    try:
        from ray._common.utils import get_default_ray_temp_dir  # Ray 2.60: RAY_TMPDIR, TMPDIR or /tmp, + /ray
        temp = Path(get_default_ray_temp_dir())
    except ImportError:
        temp = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"
    free = free_bytes(temp)
    if free < RAY_TEMP_MIN_BYTES:
        raise SweepError(f"disk full: Ray's temp dir {temp} has {free / (1 << 20):.1f} MB free; a local Ray needs at "
                         f"least {RAY_TEMP_MIN_BYTES >> 20} MB there. Free space on that file system, or point "
                         "RAY_TMPDIR at another one, then run the same command again.")


def exit_fenced(message: str) -> None:
    """This driver lost its sweep to another one (run/lock.py): say so, stop the local Ray it
    started (its trials with it), and leave at once with exit 1. Nothing else runs: no summary, no
    MLflow run ends, no Tune state save, since every one of them would write over the new holder's."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None and getattr(node, "head", False):
        for infos in list(getattr(node, "all_processes", {}).values()):
            for info in infos:
                try:
                    info.process.kill()
                except OSError:
                    pass
    os._exit(1)


RAY_WATCH_S = 1.0
"""How often the driver checks that its local Ray's raylet and GCS are still running."""


def _local_ray_processes() -> dict[str, list[Any]]:
    """The processes of the local Ray this driver started, by type ({} when it joined a cluster)."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return {}
    return {kind: [i.process for i in infos] for kind, infos in getattr(node, "all_processes", {}).items()}


def lost_ray_process() -> Optional[str]:
    """'raylet' or 'GCS' when that process of the local Ray has exited, else None."""
    procs = _local_ray_processes()
    for kind, name in ((ray_constants.PROCESS_TYPE_RAYLET, "raylet"), (ray_constants.PROCESS_TYPE_GCS_SERVER, "GCS")):
        if any(p.poll() is not None for p in procs.get(kind, [])):
            return name
    return None


def kill_local_ray() -> int:
    """Kill every process of the local Ray this driver started: its own processes, and everything in
    the sessions they lead (each starts in a session of its own, see ray_processes_in_own_session;
    the workers are the raylet's children and share its session, and a lost raylet leaves them
    orphaned, still training). Returns how many processes were killed."""
    import psutil

    procs = [p for infos in _local_ray_processes().values() for p in infos]
    sessions = {p.pid for p in procs}
    killed = 0
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
                killed += 1
            except OSError:
                pass
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        pid = proc.info["pid"]
        if pid == me or pid in sessions:
            continue
        try:
            if os.getsid(pid) in sessions:
                os.kill(pid, 9)
                killed += 1
        except OSError:  # gone meanwhile, or not ours to see
            pass
    return killed


class RayWatch:
    """A thread that notices within seconds that the local Ray's raylet or GCS died (killed, OOM):
    Tune would otherwise wait on it for minutes while the raylet's orphaned workers keep training.
    ``on_lost(what)`` runs on the thread; it is expected not to return (it exits the process)."""

    def __init__(self, on_lost: Callable[[str], None], every_s: float = RAY_WATCH_S) -> None:
        import threading

        self.on_lost, self.every_s = on_lost, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fpr-ray-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            what = lost_ray_process()
            if what is not None:
                self.on_lost(what)
                return

    def __enter__(self) -> "RayWatch":
        if _local_ray_processes():  # a joined cluster's processes are not this driver's to watch
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def exit_ray_lost(what: str, command: str, cleanup: Callable[[], None]) -> None:
    """The local Ray lost its ``what``: stop the rest of it (its workers included), run ``cleanup``
    (release the lock, remove live.json) and exit 1 at once with the command that resumes."""
    killed = kill_local_ray()
    try:
        cleanup()
    except Exception:  # exiting anyway: the lock's holder is dead, so the next run may take it
        pass
    sys.stderr.write(f"error: the local Ray's {what} died (killed, or out of memory); stopped the rest of Ray "
                     f"({killed} processes). Finished trials keep their rows; resume with: {command}\n")
    sys.stderr.flush()
    os._exit(1)


@contextmanager
def ray_processes_in_own_session() -> Iterator[None]:
    """Start a local Ray's processes (GCS, raylet, monitor, ...; workers are the raylet's children)
    in a session of their own, outside the driver's process group.

    What `timeout`, systemd, Slurm and Kubernetes send is SIGTERM to the whole process group. Ray's
    processes shared the driver's group, so they died with it while the driver was still stopping
    its trials through them: it stalled 60 s and aborted with no summary, its lock and live.json left
    and its runs RUNNING (issue 33). In their own session the signal reaches only the driver, which
    stops as on Ctrl-C and then stops Ray itself. They still die with the driver: Ray starts them
    with the parent-death signal (``fate_share``), which a session does not change. Ray 2.60 starts
    every process through ``ray._private.services.ConsolePopen``."""
    from ray._private import services

    original = services.ConsolePopen

    class OwnSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = original


def stop_ray() -> None:
    """Leave Ray: disconnect from a cluster, or stop the local Ray this process started.

    Stopping a local Ray spends a second waiting on its autoscaler monitor, which nothing in a
    local run uses: Ray stops it after the GCS, and its SIGTERM handler then tries to report its own
    end to that GCS until Ray's 1 s grace runs out (ray 2.60 `_private/node.py`,
    `autoscaler/_private/monitor.py`). Killing it first makes the stop that much shorter; the other
    processes still stop as Ray does it."""
    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None and getattr(node, "head", False):
        for info in getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, []):
            try:
                info.process.kill()
                info.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):  # gone already, or stuck: ray.shutdown handles it
                pass
    ray.shutdown()


def check_resources(spec: SweepSpec, trials: int, console: Console, node_timeout_s: float) -> None:
    """A request the cluster cannot meet would hang forever in Tune: fail fast instead, unless the
    cluster's autoscaler has node types that can meet it; then ask it for them and wait."""
    have = ray.cluster_resources()
    need = spec.resources
    if have.get("CPU", 0) < need.cpu:
        raise SweepError(f"resources.cpu: each trial asks for {need.cpu:g} CPUs but the Ray cluster has "
                         f"{have.get('CPU', 0):g}; lower resources.cpu.")
    if need.gpu <= 0 or _largest_gpu_node() >= need.gpu:
        return
    types = preflight.gpu_node_types(_autoscaler_node_types(), need.gpu, need.cpu)
    if not types:
        raise GpuUnavailable(f"resources.gpu: each trial asks for {need.gpu:g} GPU but the Ray cluster has "
                             f"{have.get('GPU', 0):g} and no autoscaler that could add a GPU node; pass --address of "
                             "a cluster with GPU nodes.")
    wait_for_gpu_nodes(need.gpu, need.cpu, types, trials, console, node_timeout_s)


def _largest_gpu_node() -> float:
    return max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)


def _autoscaler_node_types() -> list[preflight.NodeType]:
    """Node types of this cluster's autoscaler, read from its config (visible from the head node,
    where `ray job submit` and `ray attach` run the driver); [] for a fixed cluster."""
    import yaml

    path = preflight.autoscaling_config_for(ray.get_runtime_context().gcs_address)
    if path is None:
        return []
    try:
        return preflight.node_types_from_launcher_config(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError):
        return []


def wait_for_gpu_nodes(gpu: float, cpu: float, types: list[preflight.NodeType], trials: int,
                       console: Console, timeout_s: float) -> None:
    """Ask the autoscaler for ``trials`` trials' worth of GPU nodes (Tune's own demand would do the
    same, but only once trials are submitted) and wait until one trial fits."""
    from ray.autoscaler.sdk import request_resources

    needed = preflight.nodes_needed(types, gpu, trials)
    request_resources(bundles=[{"GPU": gpu, "CPU": cpu}] * trials)
    names = ", ".join(t.name for t in types)
    console.print(f"waiting for {needed} GPU node{'s' if needed > 1 else ''} ({names}) from the autoscaler: each "
                  f"trial asks for {gpu:g} GPU; giving up after {timeout_s / 60:.0f} min (--node-timeout)",
                  highlight=False)
    started = last_note = time.time()
    try:
        while _largest_gpu_node() < gpu:
            now = time.time()
            if now - started > timeout_s:
                raise SweepError(f"no GPU node came up within {timeout_s / 60:.0f} min (--node-timeout); see "
                                 "`ray status` and the autoscaler's log (monitor.log on the head).")
            if now - last_note >= 60:
                console.print(f"  still waiting for GPU nodes ({(now - started) / 60:.0f} min)", highlight=False)
                last_note = now
            time.sleep(2)
    except KeyboardInterrupt:
        raise SweepError("interrupted while waiting for GPU nodes; nothing ran.") from None
    finally:
        # A standing request would keep the nodes up after the sweep (or after a killed driver);
        # from here on the trials' own demand keeps them, and idle nodes scale down as usual.
        request_resources(bundles=[])
    console.print(f"GPU node up after {time.time() - started:.0f} s", highlight=False)


# ---------------------------------------------------------------- Tuners

def _dirname(tune_trial: Any) -> str:
    t = trial_of_config(tune_trial.config)
    return f"{t.cell.task}-{t.trial_id}"


@dataclass
class Study:
    """One Tuner: a Tune experiment name and what to run in it."""

    name: str
    samples: int
    """Tune's num_samples: the grid's size (the feed ends sooner) or a search's samples per cell."""
    cell: Optional[Cell] = None
    """The grid cell a search study tunes; None for the grid feed."""


def plan_studies(spec: SweepSpec, plan: SweepPlan, done: dict[str, str]) -> Iterator[Study]:
    """Grid sweeps: one Tuner fed the cells not finished yet. Search sweeps: one Tuner per cell."""
    h = spec.spec_hash()
    if spec.search is None:
        if any(done.get(c.cell_id) not in FINAL_STATUSES for c in plan.cells()):
            yield Study(f"grid-{h}", len(plan.grid))
        return
    for c in plan.cells():
        yield Study(f"search-{h}-{c.cell_id}", spec.search.num_samples, c)


SIZE_GUARD = 10_000
"""Sweeps with more trials than this need ``--yes`` or the spec's ``max_trials``."""


def check_size(plan: SweepPlan, yes: bool) -> None:
    """Refuse a sweep larger than intended, saying how many trials and how much training it holds."""
    spec, grid = plan.spec, plan.grid
    n = grid.trial_count()
    limit = spec.max_trials
    if (limit is None and (n <= SIZE_GUARD or yes)) or (limit is not None and n <= limit):
        return
    cost = (f"{n:,} trials, {grid.train_steps():,} training steps in all ({grid.train_examples():,} training "
            f"examples), each trial holding {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU")
    if limit is not None:
        raise SweepError(f"max_trials: the spec allows {limit:,} trials but expands to {cost}; raise max_trials "
                         "or shrink the grid.")
    raise SweepError(f"this sweep expands to {cost}, above the {SIZE_GUARD:,}-trial guard; pass --yes, or set "
                     f"max_trials: {n} in the spec, to run it (`fpr-sweep run SPEC --dry-run` lists the trials).")


def experiment_state_readable(path: str) -> bool:
    """False when the newest Tune experiment-state file under a local ``path`` is not valid JSON.

    A driver SIGKILLed while Tune rewrites that file leaves it truncated; ``Tuner.restore`` then
    logs "Failed to restore the run state" and goes on to crash on a half-built trial list.
    Remote storage (``s3://``...) is trusted: its uploads are whole-object."""
    if "://" in path:
        return True
    states = sorted(Path(path).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return False
    try:
        json.loads(states[-1].read_text())
    except (ValueError, OSError):
        return False
    return True


DISK_FULL_DRAIN_S = 5.0
"""After a full disk, MLflow writes are given this long (the store may sit on the same disk)."""
ASIDE_MARK = ".unreadable-"
"""Suffix of Tune state folders set aside (unreadable or untrusted); removed once a run completes."""


def _set_aside(path: str, reason: str, console: Console) -> None:
    aside = f"{path}{ASIDE_MARK}{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, aside)
    console.print(f"[yellow]Tune's saved state in {path} is not restored: {reason}. Moved it to {aside}; the "
                  "unfinished trials start again from scratch, finished trials keep their rows.[/]", highlight=False)


def restorable(path: str) -> Optional[str]:
    """None when Tune's state at ``path`` may be restored, else why not. Local state must be whole
    JSON and signed by this user (run/trust.py: restoring unpickles it); a URI's store is trusted
    through its own access control."""
    if "://" in path:
        return None
    if not experiment_state_readable(path):
        return "its experiment state is truncated or missing (a write was cut short)"
    elsewhere = trust.saved_elsewhere(Path(path))
    if elsewhere:
        return (f"it was saved in {elsewhere}, before the sweep folder was moved or copied here (Tune's restored "
                "trials would go on writing there)")
    return trust.untrusted_reason(Path(path))


def _tuner(plan: SweepPlan, study: Study, storage: str, meta: SweepMeta, max_concurrent: Optional[int],
           skip: frozenset[str], console: Console):
    spec = plan.spec
    trainable = tune.with_resources(fpr_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = f"{storage.rstrip('/')}/{study.name}"
    if tune.Tuner.can_restore(path):
        reason = restorable(path)
        if reason is None:
            try:
                return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True), True
            except Exception as e:  # e.g. a 0-byte tuner.pkl left by a full disk
                reason = f"Tune could not read it ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        _set_aside(path, reason, console)
    tune_config = tune.TuneConfig(num_samples=study.samples,
                                  search_alg=tune_space.search_algorithm(spec, study.cell, plan.smoke, skip),
                                  scheduler=tune_space.scheduler(spec, plan.grid),
                                  max_concurrent_trials=max_concurrent, reuse_actors=True,
                                  trial_dirname_creator=_dirname, trial_name_creator=_dirname)
    run_config = tune.RunConfig(
        name=study.name, storage_path=storage, verbose=0, callbacks=[ForwardingCallback()],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT))
    return tune.Tuner(trainable, param_space=tune_space.param_space(spec, study.cell, meta),
                      tune_config=tune_config, run_config=run_config), False


def reconcile(hub: DriverHub, exp_path: str) -> int:
    """Write rows the live callbacks missed (e.g. the driver died between a trial's end and its
    rows file); returns how many trials are still unfinished."""
    from ray.tune import ExperimentAnalysis

    unfinished = 0
    for tt in (view for tune_trial in ExperimentAnalysis(exp_path).trials for view in member_views(tune_trial)):
        if tt.status == "TERMINATED":
            hub.guarded("reconcile", hub.completed, tt)
            if hub.meta.keep_models != "none":
                hub.guarded("keeping the model", hub.keep_model, tt, tt.checkpoint)
        elif tt.status == "ERROR":
            t = hub.trial(tt)
            table = parquet.read_trial(hub.sweep_dir, t.trial_id)
            if table is None:
                hub.guarded("reconcile", hub.errored, tt)
        elif not hub.is_final(hub.trial(tt)):  # rows can arrive just before an interrupt
            unfinished += 1
    return unfinished


# ---------------------------------------------------------------- the run

def log_sweep_outcome(tracker: SweepTracker, sweep_dir: SweepDir) -> None:
    """The parent run's summary metrics (trials per status, best OOD accuracy per task) and files
    (the spec and results.parquet; `fpr-sweep report` adds the report and its plots)."""
    if sweep_dir.results.exists():
        table = parquet.read_current(sweep_dir.root).select(["trial_id", "task", "variant", "split", "size",
                                                             "halting", "status", "exact_acc"])
        tracker.log_sweep_summary(*sweep_summary(table.to_pylist()))
    tracker.log_sweep_files([sweep_dir.spec_copy, sweep_dir.results])


def reconcile_tracking(tracker: SweepTracker, hub: DriverHub) -> None:
    """After every run, the MLflow runs are made to agree with the table (finished trials without
    a run, RUNNING runs of finished trials, final metrics or models a torn spool lost): see
    SweepTracker.reconcile. Each repair is named among the run's warnings."""
    layout = SweepDir(hub.sweep_dir)
    if not layout.results.exists():
        return
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in parquet.read_results(hub.sweep_dir).to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row)
    models = {t: layout.model_file(t) for t in layout.kept_models()}
    hub.warnings.extend(tracker.reconcile(by_trial, models))


def _abandon(opening) -> None:
    """A run refused before its first trial leaves no RUNNING parent run behind (KILLED: the same
    command resumes it)."""
    try:
        opening.result().end_sweep("KILLED")
    except Exception:  # the tracker itself failed to open: nothing was started
        pass


def run_sweep(plan: SweepPlan, opts: RunOptions, tracker_factory, console: Console,
              fence: Optional[Callable[[], None]] = None, release: Optional[Callable[[], None]] = None,
              resume_command: str = "the same fpr-sweep run command") -> SweepOutcome:
    """Run (or resume) the planned sweep; ``tracker_factory(sweep_dir, meta)`` opens its SweepTracker.
    ``fence``: the sweep lock's check (raises LockLost once another driver took the sweep over).
    ``release``: releases the sweep's lock, when a lost local Ray ends the driver at once (RayWatch)."""
    from orchestrator.store.provenance import git_commit

    quiet_tune()
    spec, name = plan.spec, plan.name
    check_size(plan, opts.yes)
    sweep_dir = sweep_dir_for(plan, opts)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    meta = SweepMeta(name, spec.spec_hash(), git_commit(), spec.keep_models)
    done = parquet.finished_statuses(sweep_dir)
    skip = frozenset(t for t, st in done.items() if st in FINAL_STATUSES)
    studies = plan_studies(spec, plan, done)
    first = next(studies, None)
    studies = itertools.chain([first], studies) if first is not None else iter(())
    total = plan.trial_count
    already = sum(1 for c in plan.cells() if c.cell_id in skip) if spec.search is None and skip else 0
    outcome = SweepOutcome(sweep_dir)
    # Opening a new SQLite store runs MLflow's migrations (~10 s here): overlap it with Ray's start.
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(tracker_factory, sweep_dir, meta)
        try:
            if first is not None:
                outcome.ray_start_seconds = ensure_ray(opts.address, console)
                to_run = max(1, total - already)
                check_resources(spec, min(to_run, opts.max_concurrent or spec.max_concurrent or to_run),
                                console, opts.node_timeout_s)
        except SweepError:
            _abandon(opening)
            raise
        try:
            tracker = opening.result()
        except Exception as e:  # e.g. a new MLflow store on a full disk: refused before any trial
            if not is_disk_full(e):
                raise
            raise SweepError(str(DiskFull(sweep_dir, 0))) from None
    if first is not None:
        drop_disk_full_logs()
    variants = variants_in_order(plan)
    tracker.set_run_colours(variants, list(dict.fromkeys(s for t in plan.grid.tasks for s in t.seeds)))
    storage = SweepDir(sweep_dir).tune_storage(opts.storage)
    progress = SweepProgress(console, total, already, title=name, variants=variants,
                             trial_seconds=mean_trial_seconds(sweep_dir) if skip else None)
    with StopRequests() as stops:
        hub = DriverHub(sweep_dir, meta, tracker, progress, console, done_before=skip, stops=stops, fence=fence)
        hubs.activate(hub)
        progress.start()

        def cleanup() -> None:
            progress.stop()
            hub.live.close()
            if release is not None:
                release()

        try:
            with RayWatch(lambda what: exit_ray_lost(what, resume_command, cleanup)):
                outcome.unfinished = _run_studies(plan, studies, storage, meta, opts, skip, hub, console)
        finally:
            progress.stop()
            if hub.lock_lost is None:  # live.json is the new holder's now
                hub.live.close()
            hubs.activate(None)
    return _finish(outcome, hub, tracker, stops, storage, console, plan)


VARIANTS_NAMED = 10_000
"""Variant labels numbered up front (their short codes in the progress lines), in the spec's order."""


def variants_in_order(plan: SweepPlan) -> list[str]:
    """The grid's variant labels in the spec's order (task, then grid cell), the first VARIANTS_NAMED."""
    from orchestrator.sweep.expand import variant_label

    labels: dict[str, None] = {}
    for task in plan.grid.tasks:
        for combo in itertools.product(*task.values):
            labels[variant_label(dict(zip(task.keys, combo)))] = None
            if len(labels) >= VARIANTS_NAMED:
                return list(labels)
    return list(labels)


def mean_trial_seconds(sweep_dir: Path) -> Optional[float]:
    """Mean training + evaluation seconds of the trials finished so far (None without any)."""
    try:
        table = parquet.read_current(sweep_dir).select(["trial_id", "train_seconds", "eval_seconds"])
    except FileNotFoundError:
        return None
    per_trial = table.group_by("trial_id").aggregate([("train_seconds", "max"), ("eval_seconds", "sum")]).to_pylist()
    seconds = [(r["train_seconds_max"] or 0.0) + (r["eval_seconds_sum"] or 0.0) for r in per_trial]
    seconds = [x for x in seconds if x > 0]
    return sum(seconds) / len(seconds) if seconds else None


def closing_counts(plan: SweepPlan, sweep_dir: Path) -> tuple[dict[str, int], int]:
    """(trials per final status, trials not finished): what `fpr-sweep status` counts for this
    folder after the run (run/live.py ``trial_states``), so the summary and status agree."""
    from orchestrator.run.live import trial_states

    if plan.spec.search is None:
        planned = {c.cell_id: {"task": c.task, "variant": c.variant, "seed": c.seed} for c in plan.cells()}
        states, unplanned = trial_states(sweep_dir, planned)
    else:
        states, unplanned = trial_states(sweep_dir, {}, plan.trial_count)
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    unfinished = unplanned + sum(counts.pop(s, 0) for s in ("pending", "running", "retrying"))
    return counts, unfinished


def _run_studies(plan: SweepPlan, studies: Iterator[Study], storage: str, meta: SweepMeta, opts: RunOptions,
                 skip: frozenset[str], hub: DriverHub, console: Console) -> int:
    """Fit each study in turn (until a stop is requested); returns how many trials are unfinished."""
    spec = plan.spec
    unfinished = 0
    for study in studies:
        if hub.stops.reason is not None:
            unfinished += _unfinished_in(plan, study, hub)
            continue
        path = f"{storage.rstrip('/')}/{study.name}"
        try:
            tuner, restored = _tuner(plan, study, storage, meta, opts.max_concurrent or spec.max_concurrent,
                                     skip, console)
            if restored:
                console.print(f"resuming Tune experiment {study.name}", highlight=False)
            with trust.Signer(Path(path)) if "://" not in path else nullcontext():
                tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's own handler
            hub.stops.reason = hub.stops.reason or "interrupted"
        except Exception as e:  # Tune writing its own state on a full disk, or reading back what it cut short
            if not (is_disk_full(e) or hub.disk_full):  # e.g. EOFError from a 0-byte pickled trial error
                raise
            hub.stop_for_disk(e)
        try:
            unfinished += reconcile(hub, path)
        except Exception:  # no readable state (stopped before Tune saved any): count the study's trials
            unfinished += _unfinished_in(plan, study, hub)
    return unfinished


def _unfinished_in(plan: SweepPlan, study: Study, hub: DriverHub) -> int:
    """Trials of a study not final: the grid's unfinished cells, or a search study's samples."""
    if study.cell is not None:
        return study.samples
    return sum(1 for c in plan.cells() if not hub.is_final(resolve(c)))


def _finish(outcome: SweepOutcome, hub: DriverHub, tracker: SweepTracker, stops: StopRequests, storage: str,
            console: Console, plan: SweepPlan) -> SweepOutcome:
    """Collect the table, count, close MLflow (KILLED when stopped), say why a run stopped. A
    driver that lost its lock writes nothing more: no table, no summary, no run ends."""
    try:
        if hub.lock_lost is None:
            hub.fence()
            outcome.results_path = parquet.collect(hub.sweep_dir)
    except DiskFull as e:
        hub.disk_full = hub.disk_full or e
    except LockLost as e:
        hub.lock_lost = str(e)
    if hub.lock_lost is not None:
        tracker.abandon()
        outcome.stopped = hub.lock_lost
        return outcome
    outcome.counts, outcome.unfinished = closing_counts(plan, hub.sweep_dir)
    hub.guarded("keeping missed models", hub.recover_models, storage)
    outcome.models = SweepDir(hub.sweep_dir).kept_models()
    hub.guarded("MLflow reconcile", reconcile_tracking, tracker, hub)
    hub.guarded("sweep summary", log_sweep_outcome, tracker, SweepDir(hub.sweep_dir))
    outcome.stopped = str(hub.disk_full) if hub.disk_full else stops.reason
    ended = "KILLED" if outcome.unfinished or outcome.stopped else (
        "FAILED" if outcome.counts.get("failed") else "FINISHED")
    try:
        outcome.tracking_problem = tracker.end_sweep(ended, drain_s=DISK_FULL_DRAIN_S if hub.disk_full else None)
    except LockLost as e:  # taken over while the summary was written
        tracker.abandon()
        outcome.stopped = str(e)
        return outcome
    for w in hub.warnings + tracker.warnings:
        console.print(f"[yellow]{escape(w)}[/]", highlight=False)  # tracebacks hold [brackets]
    if not outcome.unfinished and not outcome.stopped:
        _remove_set_aside(storage)
    return outcome


def _remove_set_aside(storage: str) -> None:
    """Once a run completed, the state folders set aside by earlier runs are of no further use."""
    if "://" in storage or not Path(storage).is_dir():
        return
    for aside in Path(storage).glob(f"*{ASIDE_MARK}*"):
        shutil.rmtree(aside, ignore_errors=True)
