"""The local autoscaling backend (docs/autoscaling.md#the-local-backend): one controller per autoscaled group, in
the gateway's process, that starts and stops ``corral serve`` replicas of the group's one ``local:`` backend.

Every tick (the group's ``health.metrics_interval_s``, or at once when a request finds no replica) it samples the
group's load (for each ready replica: the gateway's requests in flight there, other clients' and its waiting
queue from its scraped ``/metrics``, its KV usage and CPU time), asks the policy (policy.py) under the host's
resource cap (resources.py), and acts:

- up: a draining replica is taken back first; otherwise a new replica is started, and routed to only once its
  ``/health`` passes (the supervisor's rule). Until one replica's memory has been measured, they start one at a time.
- down: starting replicas are stopped first, then the ready ones with the fewest requests in flight, each drained:
  no new requests, those in flight finish (for at most ``replicas.drain_timeout_s``), then stopped.

A replica that exits is restarted by its supervisor; a request that finds no replica available waits for one
(bounded by its own time limit and ``replicas.startup_timeout_s``), and at zero replicas its arrival is the cold
start."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.autoscale.gpu import GpuUtilization
from corral.gateway.autoscale.load import MetricsSample, ReplicaLoad
from corral.gateway.autoscale.policy import Autoscaler, AutoscalerState, ReplicaCap, ScalingDecision, decide
from corral.gateway.autoscale.replicas import STATES, LocalReplica, ReplicaState, Spawn
from corral.gateway.autoscale.resources import HostResources, process_tree, read_host, replica_cap
from corral.gateway.backends import Backend, Group, Monitor
from corral.gateway.config import BackendConfig
from corral.gateway.errors import GatewayError
from corral.gateway.metrics import GatewayMetrics

logger = logging.getLogger("corral.gateway")

_POLL_S = 0.05


class LocalScaler:
    """Keeps an autoscaled group's replica count at what the policy decides. ``clock`` times the policy's samples
    and the drains; ``host`` reads the host's memory and cores (both replaceable in tests)."""

    def __init__(self, group: Group, metrics: GatewayMetrics, spawn: Spawn, monitor: Monitor | None = None,
                 host: Callable[[], HostResources] = read_host, clock: Callable[[], float] = time.monotonic,
                 gpu: GpuUtilization | None = None):
        assert group.config.autoscaling is not None and len(group.config.backends) == 1
        self.group, self.metrics, self.spawn, self.monitor = group, metrics, spawn, monitor
        self.config: AutoscalingConfig = group.config.autoscaling
        # NVML is read only for a compute target; a replica on no GPU falls back to its CPU time.
        self.gpu = (gpu or GpuUtilization()) if self.config.target_compute_utilization is not None else None
        self.template: BackendConfig = group.config.backends[0]
        self.host, self.clock = host, clock
        self.autoscaler = Autoscaler(self.config)
        self.replicas: list[LocalReplica] = []
        self.replica_bytes: int | None = None  # the most memory one ready replica was measured to use
        self.num_waiting = 0  # requests held at the gateway for want of an available replica
        self.cap: ReplicaCap | None = None
        self.last_decision: ScalingDecision | None = None
        self._capped_at: int | None = None  # the cap last reported as binding (logged once per episode)
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        name = group.name
        metrics.autoscale_desired.labels(group=name).set_function(lambda: self.autoscaler.desired)
        metrics.autoscale_ceiling.labels(group=name).set_function(lambda: self.ceiling)
        for state in STATES:
            metrics.autoscale_replicas.labels(group=name, state=state).set_function(
                lambda s=state: self.count(s))

    @property
    def ceiling(self) -> int:
        cap = self.cap.max_replicas if self.cap is not None else self.config.max_replicas
        return min(cap, self.config.max_replicas)

    def count(self, state: ReplicaState) -> int:
        return sum(replica.state == state for replica in self.replicas)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        drains = [replica.drain_task for replica in self.replicas if replica.drain_task is not None]
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)  # awaited: none is left running, no error lost
        await asyncio.gather(*(self._remove(replica) for replica in list(self.replicas)))
        if self.gpu is not None:
            self.gpu.close()

    async def _loop(self) -> None:
        interval_s = self.group.config.health.metrics_interval_s
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a bug in one tick must not end the group's scaling for good
                logger.exception("autoscale %s: tick failed", self.group.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)
            self._wake.clear()

    def tick(self) -> ScalingDecision:
        """One sample, one decision, and the replicas started or drained to follow it."""
        sample = self.sample()
        self.cap, resource = self._host_cap()
        if not sample.replicas and not sample.num_queued_at_gateway:
            # As Ray Serve: with none running, only a waiting request moves the target. An idle sample now would
            # scale down replicas that are merely slow to start (or restarting) before they ever ran.
            desired = self.autoscaler.desired
            self.last_decision = ScalingDecision(desired, f"holding {desired}: no replica ready, no request waiting",
                                                 "ongoing_requests")
            self._reconcile(desired)
            return self.last_decision
        before = self.autoscaler.state
        decision = self.autoscaler.observe(sample, self.cap)
        self._note_cap(before, sample, decision, resource)
        if decision.desired != before.target_replicas:
            direction = "up" if decision.desired > before.target_replicas else "down"
            self.metrics.autoscale_events.labels(group=self.group.name, direction=direction,
                                                 reason=decision.signal).inc()
            logger.info("autoscale %s: %s", self.group.name, decision.reason)
        self.last_decision = decision
        self._reconcile(decision.desired)
        return decision

    def sample(self) -> MetricsSample:
        """The group's load now: one ReplicaLoad per ready replica, and the requests waiting at the gateway."""
        cores = self.group.config.replicas.cores_per_replica
        loads = []
        for replica in self.replicas:
            if replica.state == "draining":
                continue
            replica.measure(cores)
            if replica.state != "ready":
                continue
            if self.gpu is not None and replica.backend.pid is not None:
                replica.gpu_utilization = self.gpu.read(process_tree(replica.backend.pid))
            if replica.rss_bytes is not None:
                self.replica_bytes = max(self.replica_bytes or 0, replica.rss_bytes)
            loads.append(_load(replica))
        return MetricsSample(self.clock(), tuple(loads), self.num_waiting)

    def _host_cap(self) -> tuple[ReplicaCap, str]:
        live = [replica for replica in self.replicas if replica.state != "draining"]
        growth = 0
        if self.replica_bytes is not None:
            growth = sum(max(0, self.replica_bytes - (r.rss_bytes or 0)) for r in live if r.state == "starting")
        config = self.group.config.replicas
        return replica_cap(len(live), growth, self.replica_bytes, self.host(), config.reserve_memory_bytes,
                           config.cores_per_replica)

    def _note_cap(self, before: AutoscalerState, sample: MetricsSample, decision: ScalingDecision,
                  resource: str) -> None:
        """Logs one line, and counts it, when the host's cap holds the group below what the policy asks for."""
        wanted, _ = decide(before, sample, self.config)
        if wanted.desired <= decision.desired:
            self._capped_at = None
            return
        if self._capped_at != decision.desired:
            self._capped_at = decision.desired
            self.metrics.autoscale_capped.labels(group=self.group.name, resource=resource).inc()
            logger.warning("autoscale %s: the policy asks for %d replicas; capped at %d by %s", self.group.name,
                           wanted.desired, decision.desired, self.cap.reason if self.cap else resource)

    def _reconcile(self, desired: int) -> None:
        live = [replica for replica in self.replicas if replica.state != "draining"]
        if len(live) > desired:
            # Starting replicas first (nothing to drain), then the ready ones with the fewest requests in flight.
            order = sorted(live, key=lambda r: (r.state == "ready", r.backend.in_flight, -r.serial))
            for replica in order[:len(live) - desired]:
                self._drain(replica)
            return
        missing = min(desired, self.ceiling) - len(live)  # the policy bounds it too, but not while it holds
        for replica in [r for r in self.replicas if r.state == "draining" and not r.stopping][:missing]:
            self._take_back(replica)
            missing -= 1
        if missing > 0 and self.replica_bytes is None:
            # Its size unknown until one has run, a replica is started only when none is starting.
            missing = 0 if any(replica.state == "starting" for replica in self.replicas) else 1
        for _ in range(missing):
            self._start_replica()

    def _start_replica(self) -> None:
        serial = next(self._serial)
        backend = Backend(self._free_name(), self.template)
        self.group.add(backend)
        replica = LocalReplica(backend, self.spawn(self.group, backend), serial)
        self.replicas.append(replica)
        replica.process.start()
        if self.monitor is not None:
            self.monitor.watch(self.group, backend)
        logger.info("autoscale %s: starting replica %s", self.group.name, backend.name)

    def _free_name(self) -> str:
        """The lowest ``<group>-<n>`` no replica holds now. Names are reused, so the per-backend metric series
        (requests, retries, restarts...) stay as many as the group's replicas at once, never one per replica
        ever started."""
        base, taken = self.template.name or self.group.name, {replica.backend.name for replica in self.replicas}
        return next(name for name in (f"{base}-{n}" for n in itertools.count()) if name not in taken)

    def _drain(self, replica: LocalReplica) -> None:
        replica.backend.draining = True  # out of routing from now on: Backend.available
        replica.draining_since = self.clock()
        replica.drain_task = asyncio.create_task(self._drain_then_stop(replica))

    def _take_back(self, replica: LocalReplica) -> None:
        if replica.drain_task is not None:
            replica.drain_task.cancel()
        replica.drain_task, replica.draining_since = None, None
        replica.backend.draining = False
        logger.info("autoscale %s: replica %s taken back from draining", self.group.name, replica.backend.name)

    async def _drain_then_stop(self, replica: LocalReplica) -> None:
        backend, began = replica.backend, replica.draining_since
        deadline = began + self.group.config.replicas.drain_timeout_s
        num_in_flight = backend.in_flight
        while backend.in_flight > 0 and self.clock() < deadline:
            await asyncio.sleep(_POLL_S)
        replica.stopping = True  # past here, it cannot be taken back
        left = backend.in_flight
        await self._remove(replica)
        elapsed = self.clock() - began
        self.metrics.replica_drain.labels(group=self.group.name).observe(elapsed)
        if left:
            logger.warning("autoscale %s: replica %s still had %d requests in flight after drain_timeout_s %g s; "
                           "stopped", self.group.name, backend.name, left, self.group.config.replicas.drain_timeout_s)
        else:
            logger.info("autoscale %s: replica %s drained (%d requests were in flight) and stopped in %.2f s",
                        self.group.name, backend.name, num_in_flight, elapsed)

    async def _remove(self, replica: LocalReplica) -> None:
        await replica.process.stop()
        if self.monitor is not None:
            await self.monitor.unwatch(replica.backend)
        if replica in self.replicas:
            self.replicas.remove(replica)
            self.group.remove(replica.backend)

    async def wait_for_replica(self, deadline: float) -> None:
        """Returns once the group has an available replica, or at ``deadline`` (time.monotonic). Meanwhile the
        request counts as waiting at the gateway, and the controller is woken to see it: at zero replicas, the
        cold start."""
        if self.group.candidates(time.monotonic()):
            return
        self.num_waiting += 1
        self._wake.set()
        try:
            while not self.group.candidates(time.monotonic()) and time.monotonic() < deadline:
                if self.cap is not None and self.ceiling == 0 and not self.replicas:
                    raise GatewayError(503, f"model group {self.group.name!r} has no replica, and this host fits "
                                            f"none now ({self.cap.reason})", code="no_capacity")
                await asyncio.sleep(_POLL_S)
        finally:
            self.num_waiting -= 1

    def status(self) -> dict:
        """For /gateway/status."""
        decision = self.last_decision
        return {"desired": self.autoscaler.desired, "min_replicas": self.config.min_replicas,
                "max_replicas": self.config.max_replicas, "ceiling": self.ceiling,
                "cap": self.cap.reason if self.cap is not None else None,
                "replicas": {state: self.count(state) for state in STATES}, "replica_bytes": self.replica_bytes,
                "waiting_at_gateway": self.num_waiting, "reason": decision.reason if decision else None}


def _load(replica: LocalReplica) -> ReplicaLoad:
    """The gateway's requests in flight there (exact) and other clients' (as last scraped), of which as many as
    the replica's queue held count as waiting."""
    backend = replica.backend
    ongoing = backend.in_flight + round(backend.others)
    waiting = min(ongoing, round(backend.waiting))
    return ReplicaLoad(num_running=ongoing - waiting, num_waiting=waiting,
                       kv_cache_usage=min(1.0, max(0.0, backend.kv_usage)), cpu_utilization=replica.cpu_utilization,
                       gpu_utilization=replica.gpu_utilization)
