"""Ray for the ``--engine ray`` commands: join or start a cluster, and size requests from what it has.

Ray is imported inside functions only, here and in the modules that run work on it
(:mod:`anomaly.station.distributed`, :mod:`anomaly.study.executors`): the CLI stays fast without it. :func:`ray_session` joins the cluster at ``address`` or starts a local Ray that stops with the
command; a session that is already connected (a notebook, the tests) is used as it is and left
running. :func:`plan_resources` turns the cluster's CPUs into the requests of the scoring actors and
the decode workers: on two cores, two actors that each claim a whole CPU leave nothing for decoding
and the pipeline stalls, so actors claim a share of a CPU sized from the machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

SCORING_SHARE = 0.75  # of the cluster's CPUs requested by the scoring actors; the rest decodes
DECODE_CPUS = 0.25  # request of one decode worker (a fraction: decoding runs beside the scoring actors)


class RayUnavailableError(OSError):
    """Ray is not installed, the cluster cannot be started or joined, or a worker failed (the message says which)."""


def import_ray() -> Any:
    """``ray``, or a :class:`RayUnavailableError` saying how to get it."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError(f"--engine ray needs Ray (pip install 'ray[data]'; pinned in pyproject.toml): {err}") \
            from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield ``ray`` connected to a cluster.

    Args:
        address: ``HOST:PORT`` of a running cluster's head (``ray start --head`` prints it), or
            ``"auto"``; ``None`` starts a local Ray with ``num_cpus`` (default: every core) that
            is shut down on exit.

    Raises:
        RayUnavailableError: Ray is missing, or the cluster cannot be reached or started.
    """
    ray = import_ray()
    if ray.is_initialized():  # a notebook's or a test's session: use it, leave it running
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a CLI command
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayUnavailableError(f"cannot start or join {where}: {err}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_size(ray: Any) -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster, all nodes together."""
    total = ray.cluster_resources()
    return float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))


@dataclass(frozen=True)
class ResourcePlan:
    """Requests of one ``predict --engine ray`` job.

    Attributes:
        actors: scoring actors (each loads the run once).
        actor_cpus: logical CPUs each scoring actor requests (may be a fraction).
        actor_gpus: GPUs each scoring actor requests (0 on a CPU cluster).
        threads: intra-op threads of each scoring actor's runtime.
        decoders: decode workers (long-lived: each imports the decoder once).
        decode_cpus: logical CPUs each decode worker requests.
    """

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    decoders: int
    decode_cpus: float


def plan_resources(cpus: float, gpus: float = 0.0, actors: int | None = None, threads: int | None = None,
                   use_gpu: bool = False, decoders: int | None = None) -> ResourcePlan:
    """Size the requests from the cluster's ``cpus`` (and ``gpus``).

    By default one single-threaded scoring actor per CPU (batch-level parallelism beats intra-op
    threads on small CPUs). Together they request :data:`SCORING_SHARE` of the CPUs, so the decode
    workers (:data:`DECODE_CPUS` each) always find room: on 2 CPUs two actors ask 0.75 each and
    leave 0.5 for two decode workers; on 1-CPU nodes each node holds one actor and one decode worker.

    Raises:
        ValueError: no CPU in the cluster, or ``actors`` / ``threads`` / ``decoders`` below 1.
    """
    if cpus <= 0:
        raise ValueError("the Ray cluster has no CPU to run the decode and scoring workers on")
    for name, value in (("actors", actors), ("threads", threads), ("decoders", decoders)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    threads = threads or 1
    actors = actors or max(1, math.floor(cpus / threads))
    actor_cpus = max(0.01, round(min(float(threads), SCORING_SHARE * cpus / actors), 3))
    actor_gpus = round(min(1.0, gpus / actors), 3) if use_gpu and gpus > 0 else 0.0
    free = max(cpus - actors * actor_cpus, DECODE_CPUS)
    decoders = decoders or max(1, min(math.floor(free / DECODE_CPUS + 1e-9), actors))
    return ResourcePlan(actors, actor_cpus, actor_gpus, threads, decoders, DECODE_CPUS)


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus_per_node: int = 1, env: dict[str, str] | None = None,
                     timeout: float = 180.0) -> Iterator[tuple[str, dict[str, str]]]:
    """A real Ray cluster of ``nodes`` nodes on 127.0.0.1 of this machine, stopped on exit.

    ``ray start --head`` and then ``ray start --address`` for each further node, ``cpus_per_node``
    CPUs each, with a token of their own (``RAY_AUTH_TOKEN``); for the tests and the throughput
    measurement. On exit every process the nodes started is killed by its id (never ``ray stop``,
    which would stop any other Ray on the machine).

    Args:
        env: extra environment of the nodes' processes (``PYTHONPATH`` where workers import the package).

    Yields:
        ``(address, driver_env)``: the head's ``HOST:PORT`` and the variables a driver needs to join.

    Raises:
        RayUnavailableError: a node did not start within ``timeout`` seconds (its log is in the message).
    """
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    driver_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    node_env = {**os.environ, **(env or {}), **driver_env}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    common = ["--block", "--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    nodes_started: list[subprocess.Popen] = []
    try:
        for i in range(nodes):
            args = (["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp] if i == 0
                    else ["--address", address])
            log = Path(temp) / f"node{i}.log"
            with log.open("wb") as handle:
                nodes_started.append(subprocess.Popen([ray_bin, "start", *args, *common], env=node_env,
                                                      stdout=handle, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for_line(log, "Ray runtime started", nodes_started[-1], timeout)
        yield address, driver_env
    finally:
        _kill_trees([p.pid for p in nodes_started])
        for node in nodes_started:
            node.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_line(log: Path, line: str, node: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if line in text:
            return
        if node.poll() is not None:
            break
        time.sleep(0.2)
    raise RayUnavailableError(f"a Ray node did not start ({' '.join(node.args)}):\n{log.read_text(errors='replace')[-2000:]}")


def _kill_trees(pids: list[int]) -> None:
    """SIGKILL ``pids`` and all their descendants (snapshotted first, from /proc), by process id."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
