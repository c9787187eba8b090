"""What this host has room for (the local backend's resource guard): each replica's memory, measured from /proc as
the resident set of its process and all its descendants, the host's available memory and its cores, and from
them the most replicas that fit (``replica_cap``, pure). Linux only: elsewhere nothing is measured and only the
cores bound the count."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from corral.gateway.autoscale.policy import ReplicaCap

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_GIB = 1024**3


@dataclass(frozen=True)
class HostResources:
    """The host now: memory available to new processes (``MemAvailable``; None where unknown) and cores."""

    mem_available_bytes: int | None
    num_cores: int


def read_host() -> HostResources:
    return HostResources(mem_available_bytes(), usable_cores())


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's cpuset, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_available_bytes() -> int | None:
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (children are listed per thread: every thread's list is read)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list((_PROC / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return found


def tree_rss_bytes(pid: int) -> int | None:
    """The resident memory of ``pid`` and its descendants (pages they share are counted once per process: an
    overestimate, which errs on the side of starting fewer replicas); None when ``pid`` is gone."""
    total, seen = 0, False
    for member in process_tree(pid):
        try:
            for line in (_PROC / str(member) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    seen = True
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else None


def tree_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` and its live descendants; None when ``pid`` is gone."""
    total, seen = 0.0, False
    for member in process_tree(pid):
        try:
            # The command name (field 2) may hold spaces: the fields after it start past its closing paren.
            fields = (_PROC / str(member) / "stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else None


def replica_cap(num_live: int, growth_bytes: int, replica_bytes: int | None, host: HostResources,
                reserve_memory_bytes: int, cores_per_replica: float) -> tuple[ReplicaCap, str]:
    """The most replicas this host fits, the reason, and the resource that bounds it (``memory`` or ``cores``).

    ``num_live``: replicas running or starting (their memory is no longer in ``MemAvailable``, except what the
    starting ones will still grow by, ``growth_bytes``); ``replica_bytes``: one replica's measured memory, None
    before any was measured (memory then bounds nothing unless none is left beyond the reserve)."""
    by_cores = math.floor(host.num_cores / cores_per_replica + 1e-9)
    cores = (ReplicaCap(by_cores, f"cores: {by_cores} replicas of {cores_per_replica:g} cores fit in "
                                  f"{host.num_cores} cores"), "cores")
    if host.mem_available_bytes is None:
        return cores
    headroom = host.mem_available_bytes - reserve_memory_bytes - growth_bytes
    beyond = (f"{_gib(max(headroom, 0))} available beyond the {_gib(reserve_memory_bytes)} reserve"
              + (f" and {_gib(growth_bytes)} that starting replicas will still take" if growth_bytes else ""))
    if replica_bytes is None:
        if headroom > 0:
            return cores
        memory = ReplicaCap(num_live, f"memory: {num_live} replicas fit ({beyond})")
    else:
        fit = num_live + max(0, headroom) // max(replica_bytes, 1)
        memory = ReplicaCap(fit, f"memory: {fit} replicas of {_gib(replica_bytes)} fit ({num_live} live; {beyond})")
    return (memory, "memory") if memory.max_replicas < cores[0].max_replicas else cores


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / _GIB:.2f} GiB"
