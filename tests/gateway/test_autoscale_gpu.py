"""GPU utilization for ``target_compute_utilization`` (corral/gateway/autoscale/gpu.py): the GPUs a replica's
processes run on, read through NVML. This host has no GPU and no NVML, so the reads go to a stand-in with
pynvml's functions; the import that fails here is the real one."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import pytest

from corral.gateway.autoscale.gpu import GpuUtilization

from .test_autoscale_local import scaler_for


class NVMLError(Exception):
    pass


@dataclass
class Device:
    pids: tuple[int, ...]
    utilization: int  # percent, as NVML reports it
    fails: bool = False


@dataclass
class Rates:
    gpu: int


@dataclass
class Process:
    pid: int


class StandInNvml:
    """pynvml's functions over a list of devices."""

    NVMLError = NVMLError

    def __init__(self, devices: list[Device]):
        self.devices, self.started, self.stopped = devices, False, False

    def nvmlInit(self) -> None:
        self.started = True

    def nvmlShutdown(self) -> None:
        self.stopped = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        return self.devices[index]

    def nvmlDeviceGetComputeRunningProcesses(self, device: Device) -> list[Process]:
        return [Process(pid) for pid in device.pids]

    def nvmlDeviceGetUtilizationRates(self, device: Device) -> Rates:
        if device.fails:
            raise NVMLError("GPU is lost")
        return Rates(device.utilization)


def test_a_replicas_gpus_are_the_ones_its_processes_run_on(caplog):
    nvml = StandInNvml([Device((10,), 80), Device((20, 21), 40), Device((), 99)])
    reader = GpuUtilization(nvml)
    assert reader.read([20]) == 0.4
    assert reader.read([10, 21]) == pytest.approx(0.6)  # tensor parallel over two GPUs: their mean
    assert reader.read([99]) is None  # on no GPU: CPU time stands
    nvml.devices[0].fails = True
    with caplog.at_level(logging.WARNING, logger="corral.gateway"):
        assert reader.read([10]) is None
    assert "GPU is lost" in caplog.text
    reader.close()
    assert nvml.started and nvml.stopped


def test_without_nvml_every_read_is_none_and_the_log_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="corral.gateway"):
        reader = GpuUtilization()  # the real `import pynvml`, which fails on this host
        assert reader.read([os.getpid()]) is None
    assert "nvidia-ml-py" in caplog.text


def test_a_replica_on_a_busy_gpu_scales_the_group_on_its_gpu_not_its_cpu():
    async def main() -> None:
        settings = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 100,
                    "target_compute_utilization": 0.5, "look_back_period_s": 1, "upscale_delay_s": 0}
        scaler, clock, _ = scaler_for(settings)
        nvml = StandInNvml([Device((os.getpid(),), 100)])  # the stand-in replica's pid is this process's
        scaler.gpu = GpuUtilization(nvml)
        scaler.tick()
        clock.now += 1
        sample = scaler.sample()
        assert [load.gpu_utilization for load in sample.replicas] == [1.0]
        assert sample.replicas[0].compute_utilization == 1.0  # this idle test process's CPU time is not read
        decision = scaler.tick()
        assert decision.desired == 2 and decision.signal == "compute_utilization"
        await scaler.stop()
        assert nvml.stopped

    asyncio.run(main())
