"""Checks made before a sweep starts anything: is the Ray address a Ray cluster that answers, and
can the cluster (now, or once its autoscaler adds nodes) give a trial the GPUs it asks for.
No Ray import: the driver passes in what it read from Ray.

`ray.init` on an address where nothing answers retries for minutes; a TCP connect with a short
timeout, then the HTTP/2 preface that Ray's GCS (a gRPC server) must answer, tells within seconds.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from orchestrator.sweep.errors import AddressError

PROBE_TIMEOUT_S = 5.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_SETTINGS = 0x4
GCS_DEFAULT_PORT = 6379


def check_address(address: Optional[str], timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within ~2 x ``timeout`` unless ``address`` ('auto', 'host:port', 'ray://host:port')
    has a gRPC server (Ray's GCS, or a Ray Client server) listening."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise AddressError(f"--address {address}: that is an HTTP address (the dashboard / Jobs API); "
                           f"--address takes the cluster's GCS address, e.g. 'auto' on the head or "
                           f"HOST:{GCS_DEFAULT_PORT}. To run through the Jobs API use `ray job submit --address "
                           f"{address} -- fpr-sweep run ... --address auto`.")
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(f"--address {address}: expected 'auto', HOST:PORT (e.g. 10.0.0.5:{GCS_DEFAULT_PORT}) "
                           "or ray://HOST:PORT.")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(HTTP2_PREFACE + _settings_frame())
            head = _read(conn, 9)
    except socket.gaierror as e:
        raise AddressError(f"--address {address}: unknown host {host!r} ({e.strerror}).") from None
    except (socket.timeout, TimeoutError):
        raise AddressError(f"--address {address}: no answer within {timeout:g} s (host down, firewalled, or "
                           "the wrong port).") from None
    except OSError as e:
        raise AddressError(f"--address {address}: cannot connect ({e.strerror or e}); is Ray running there "
                           f"(`ray start --head --port={port_text}`)?") from None
    if len(head) < 9 or head[3] != HTTP2_SETTINGS:
        raise AddressError(f"--address {address}: something answers there, but not Ray (its GCS speaks gRPC); "
                           f"check the port (the GCS listens on {GCS_DEFAULT_PORT} by default).")


def _settings_frame() -> bytes:
    return (0).to_bytes(3, "big") + bytes([HTTP2_SETTINGS, 0]) + (0).to_bytes(4, "big")


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@dataclass
class NodeType:
    """One autoscaler node type: what each node provides and how many may run."""

    name: str
    resources: dict[str, float]
    max_count: int
    """-1: unbounded."""


def node_types_from_launcher_config(config: dict[str, Any]) -> list[NodeType]:
    """Worker node types of a cluster-launcher config (e.g. the head's ~/ray_bootstrap_config.yaml,
    where `ray up` has filled in each cloud instance type's CPUs and GPUs)."""
    head = config.get("head_node_type")
    return [NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                     int(t.get("max_workers", config.get("max_workers", 0))))
            for name, t in (config.get("available_node_types") or {}).items() if name != head]


def gpu_node_types(types: Iterable[NodeType], gpus_per_trial: float, cpus_per_trial: float) -> list[NodeType]:
    """Node types on which one trial fits (its GPUs and CPUs on one node)."""
    return [t for t in types if t.max_count != 0 and t.resources.get("GPU", 0) >= gpus_per_trial
            and t.resources.get("CPU", cpus_per_trial) >= cpus_per_trial]


def nodes_needed(types: list[NodeType], gpus_per_trial: float, trials: int) -> int:
    """GPU nodes of the best-fitting type for ``trials`` trials at once (at least one)."""
    per_node = max(int(t.resources["GPU"] // gpus_per_trial) for t in types)
    return max(1, -(-trials // max(per_node, 1)))


def autoscaling_config_for(gcs_address: str, proc: Path = Path("/proc")) -> Optional[Path]:
    """The autoscaler config of the cluster at ``gcs_address``: the `--autoscaling-config` of its
    monitor process (on the head; `ray up` writes ~/ray_bootstrap_config.yaml, with each node
    type's CPUs and GPUs filled in). None where no such monitor runs on this machine: a fixed
    cluster, or a driver on another machine."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"--gcs-address={gcs_address}" not in argv:
            continue
        for arg in argv:
            if arg.startswith("--autoscaling-config="):
                path = Path(os.path.expanduser(arg.split("=", 1)[1]))
                return path if path.exists() else None
    return None


def cpu_profile_for(spec_path: Optional[Path]) -> Optional[Path]:
    """The CPU profile of a GPU study: <name>_cpu.yaml next to <name>.yaml, if it exists."""
    if spec_path is None:
        return None
    candidate = Path(spec_path).with_name(f"{Path(spec_path).stem}_cpu.yaml")
    return candidate if candidate.exists() else None
