"""GPU utilization of a local replica, through NVML (NVIDIA's management library, the `nvidia-ml-py` package,
imported only when a group has a ``target_compute_utilization``): the busy fraction of the GPUs on which the
replica's processes run, as ``nvidia-smi`` reports it. A replica that runs on no GPU, or a host without NVML,
gets None, and its compute utilization is its CPU time instead (replicas.py).

No torch, no CUDA: NVML reads the driver's counters, as Kubernetes' device plugins and DCGM do."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

logger = logging.getLogger("corral.gateway")


class GpuUtilization:
    """Reads, per replica process tree, the mean utilization (0-1) of the GPUs its processes hold contexts on.
    ``nvml``: the ``pynvml`` module (None: import it on first use; absent or failing to initialize, every read
    is None, said once in the log)."""

    def __init__(self, nvml: Any = None):
        self._nvml = nvml
        self._ready: bool | None = None

    def read(self, pids: Collection[int]) -> float | None:
        """The utilization of the GPUs that any of ``pids`` uses, averaged over those GPUs; None when none does."""
        nvml = self._started()
        if nvml is None or not pids:
            return None
        busy: list[float] = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if any(process.pid in pids for process in running):
                    busy.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        except nvml.NVMLError as error:
            logger.warning("NVML: reading GPU utilization failed (%s); this sample uses CPU time", error)
            return None
        return min(1.0, max(0.0, sum(busy) / len(busy))) if busy else None

    def _started(self) -> Any:
        if self._ready is None:
            self._ready = False
            try:
                if self._nvml is None:
                    import pynvml

                    self._nvml = pynvml
                self._nvml.nvmlInit()
                self._ready = True
            except ImportError:
                logger.info("NVML is not installed (pip install nvidia-ml-py): compute utilization is CPU time")
            except Exception as error:  # noqa: BLE001 - pynvml.NVMLError: no driver, no GPU on this host
                logger.info("NVML unavailable (%s): compute utilization is CPU time", error)
        return self._nvml if self._ready else None

    def close(self) -> None:
        if self._ready:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down; nothing to do about it
                pass
            self._ready = None
