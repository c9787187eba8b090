"""An autoscaled group's local replicas as the controller (local.py) sees them: each a ``Backend`` of the group
and the process that keeps it running, in one of three states (starting, ready, draining), with what was last
measured of it on this host (memory, CPU time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from corral.gateway.autoscale.resources import tree_cpu_seconds, tree_rss_bytes
from corral.gateway.backends import Backend, Group

ReplicaState = Literal["starting", "ready", "draining"]
STATES: tuple[ReplicaState, ...] = ("ready", "starting", "draining")


class ReplicaProcess(Protocol):
    """What keeps one replica running (``supervisor.ReplicaSupervisor``). Invariant: the backend it was made for
    gets a ``url`` and ``healthy`` only once the replica answers ``/health``, and loses its ``url`` whenever the
    process is down; a process that exits is restarted until ``stop``."""

    def start(self) -> None:
        """Starts the process and its supervision in the background (returns at once)."""
        ...

    async def stop(self) -> None:
        """Stops the process (terminate, then kill) and its supervision; returns once it has exited."""
        ...


# Makes the process for a new replica of a group (the gateway: a ReplicaSupervisor on its HTTP client).
Spawn = Callable[[Group, Backend], ReplicaProcess]


@dataclass(eq=False)
class LocalReplica:
    """One replica of an autoscaled group. ``stopping``: its drain is over and its process is being stopped
    (from then on it cannot be taken back)."""

    backend: Backend
    process: ReplicaProcess
    serial: int
    draining_since: float | None = None
    drain_task: asyncio.Task | None = None
    stopping: bool = False
    rss_bytes: int | None = None
    cpu_utilization: float | None = None
    gpu_utilization: float | None = None  # of the GPUs it runs on (gpu.py); None: none, or no NVML
    _cpu_mark: tuple[int, float, float] | None = None  # (pid, wall clock, CPU seconds) at the last measure

    @property
    def state(self) -> ReplicaState:
        if self.backend.draining:
            return "draining"
        return "ready" if self.backend.url is not None and self.backend.healthy else "starting"

    def measure(self, cores_per_replica: float) -> None:
        """Reads its process tree's memory and CPU time from /proc; CPU utilization is the CPU time since the last
        measure over the wall time, per core it is given (0-1)."""
        pid = self.backend.pid
        if pid is None:
            self.rss_bytes, self.cpu_utilization, self._cpu_mark = None, None, None
            return
        self.rss_bytes = tree_rss_bytes(pid)
        cpu_s, now = tree_cpu_seconds(pid), time.monotonic()
        mark = self._cpu_mark
        if cpu_s is None:
            self.cpu_utilization, self._cpu_mark = None, None
            return
        if mark is not None and mark[0] == pid and now > mark[1]:
            busy = (cpu_s - mark[2]) / (now - mark[1]) / cores_per_replica
            self.cpu_utilization = min(1.0, max(0.0, busy))
        self._cpu_mark = (pid, now, cpu_s)
