"""What the host offers, read once: memory, CPU flags, CUDA."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_amx_bf16() -> bool:
    """Whether the CPU has AMX bf16 tiles (Intel since Sapphire Rapids): oneDNN runs bf16 matrix products on them."""
    return "amx_bf16" in cpu_flags()


def available_cpu_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or 4 GiB if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def num_cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def release_free_memory() -> None:
    """Hand memory that was freed (e.g. float weights replaced by packed ones) back to the OS. glibc keeps
    freed heap pages mapped otherwise, and they count in the process's RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
