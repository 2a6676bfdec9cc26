"""Ray itself, behind one module (tune_api.py holds Tune's names; no other module imports ray):
start, join, watch and stop the Ray a command uses; the cluster's resources and its autoscaler;
remote tasks (`fpr-sweep eval`) and a worker's node id. Ray's API has changed across versions, so
its calls stay in these two files (STACK.md).

A local Ray serves this machine only: its processes start in a session of their own (a SIGTERM to
the driver's process group reaches the driver alone, which then stops Ray), listen on loopback
(preflight.import_ray_on_loopback imports this module), and are watched (``RayWatch``): a raylet or
GCS that dies ends the driver at once with the command that resumes.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import ray
from ray._private import ray_constants
from rich.console import Console

from orchestrator.console import quiet_ray_messages
from orchestrator.run import preflight
from orchestrator.store.space import DropDiskFull
from orchestrator.sweep.errors import GpuUnavailable, SweepError
from orchestrator.sweep.spec import SweepSpec


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


# ---------------------------------------------------------------- tasks and workers

def remote_tasks(fn: Callable[..., Any], resources: dict[str, float], max_retries: int = 1) -> Any:
    """``fn`` as a Ray task holding one trial's resources (``.remote(...)`` submits one)."""
    return ray.remote(fn).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0),
                                  max_retries=max_retries)


def next_done(pending: list[Any], timeout_s: float) -> Optional[Any]:
    """The first of ``pending`` (task references) to finish within ``timeout_s``, else None."""
    done, _ = ray.wait(pending, num_returns=1, timeout=timeout_s)
    return done[0] if done else None


def task_result(ref: Any) -> Any:
    """A finished task's value (raises what the task raised)."""
    return ray.get(ref)


def node_id() -> Optional[str]:
    """The Ray node this worker runs on (None outside a Ray worker)."""
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray worker (never in a sweep)
        return None
