"""What the autoscaling policy reads: a group's load at one moment (``MetricsSample``), and that load over the
look-back window (``Demand``).

Each signal is summed over the replicas, in units of one replica's worth (requests; KV caches in use; busy
processors), so a window whose samples span a change in replica count still adds up: the desired count for a
signal is its total over its per-replica target, whatever the count was when each sample was taken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from corral.gateway.autoscale.config import Aggregation


@dataclass(frozen=True)
class ReplicaLoad:
    """One healthy replica's load, as last scraped from its ``/metrics`` (and, for compute, from the host:
    its processes' CPU time over the cores given to it, or NVML's GPU utilization). Fractions are 0-1."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float = 0.0
    cpu_utilization: float | None = None
    gpu_utilization: float | None = None

    def __post_init__(self) -> None:
        if self.num_running < 0 or self.num_waiting < 0:
            raise ValueError(f"request counts must be >= 0, got running {self.num_running}, "
                             f"waiting {self.num_waiting}")
        for name in ("kv_cache_usage", "cpu_utilization", "gpu_utilization"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    @property
    def num_ongoing(self) -> int:
        return self.num_running + self.num_waiting

    @property
    def compute_utilization(self) -> float | None:
        """The GPU's where the replica has one: its CPU threads mostly wait on the GPU there."""
        return self.gpu_utilization if self.gpu_utilization is not None else self.cpu_utilization


@dataclass(frozen=True)
class MetricsSample:
    """A group's load at ``time_s`` (seconds on any monotonic clock): one ``ReplicaLoad`` per healthy replica,
    and the requests held at the gateway for want of one (at zero replicas, every request is there)."""

    time_s: float
    replicas: tuple[ReplicaLoad, ...] = ()
    num_queued_at_gateway: int = 0

    def __post_init__(self) -> None:
        if self.num_queued_at_gateway < 0:
            raise ValueError(f"num_queued_at_gateway must be >= 0, got {self.num_queued_at_gateway}")

    @property
    def num_healthy_replicas(self) -> int:
        return len(self.replicas)

    @property
    def num_ongoing(self) -> int:
        return sum(r.num_ongoing for r in self.replicas) + self.num_queued_at_gateway

    @property
    def total_kv_cache_usage(self) -> float:
        return sum(r.kv_cache_usage for r in self.replicas)

    @property
    def total_compute_utilization(self) -> float | None:
        """Replicas that report none are taken to be as busy as those that do; None when none reports."""
        reported = [u for r in self.replicas if (u := r.compute_utilization) is not None]
        return fmean(reported) * len(self.replicas) if reported else None


@dataclass(frozen=True)
class Demand:
    """A group's load over the look-back window, each signal a total over its replicas."""

    num_ongoing: float
    kv_cache_usage: float
    compute_utilization: float | None


_AGGREGATE = {"mean": fmean, "max": max, "min": min}


def within_look_back(samples: Sequence[MetricsSample], now_s: float, look_back_period_s: float
                     ) -> tuple[MetricsSample, ...]:
    """The samples taken in the last ``look_back_period_s`` before ``now_s`` (a sample at ``now_s`` included)."""
    return tuple(s for s in samples if s.time_s > now_s - look_back_period_s)


def aggregate(samples: Sequence[MetricsSample], how: Aggregation) -> Demand:
    """Each signal's total at every sample, combined over the samples by ``how`` (Ray's aggregation_function)."""
    assert samples, "a look-back window always holds the sample just taken"
    combine = _AGGREGATE[how]
    compute = [u for s in samples if (u := s.total_compute_utilization) is not None]
    return Demand(
        num_ongoing=combine([s.num_ongoing for s in samples]),
        kv_cache_usage=combine([s.total_kv_cache_usage for s in samples]),
        compute_utilization=combine(compute) if compute else None,
    )
