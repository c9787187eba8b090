"""A group's backends and what the gateway knows of each: where it is, whether it takes requests (up, passing
``/health``, not ejected), its load (in flight here; waiting, running and KV usage scraped from its
``/metrics``, and from them the requests other clients have there), and passive outlier ejection after
consecutive failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import httpx

from corral.gateway.config import BackendConfig, GroupConfig
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.routing import Router, build_router

logger = logging.getLogger("corral.gateway")

# The replica gauges the scraper reads (corral/server/metrics.py names them as vLLM does, with `corral:`).
_SCRAPED = {"corral:num_requests_waiting": "waiting", "corral:num_requests_running": "running",
            "corral:kv_cache_usage_perc": "kv_usage"}


@dataclass(eq=False)
class Backend:
    """One backend of a group. ``url`` is None while a local replica is down or starting."""

    name: str
    config: BackendConfig
    url: str | None = None
    healthy: bool = False
    in_flight: int = 0
    waiting: float = 0.0
    running: float = 0.0
    others: float = 0.0  # running + waiting there, less this gateway's own requests, at the last scrape
    kv_usage: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    pid: int | None = None
    restarts: int = 0
    start_s: float | None = None  # how long its last start took, process to passing /health
    draining: bool = False  # being taken away by the autoscaler: no new requests, those in flight finish

    @property
    def local(self) -> bool:
        return self.config.local is not None

    @property
    def on_premises(self) -> bool:
        """Inside this host or cluster: a local replica, or a url backend the config marks so."""
        return self.local or self.config.on_premises

    def available(self, now: float) -> bool:
        return self.url is not None and self.healthy and not self.draining and now >= self.ejected_until

    def status(self, now: float) -> dict:
        """For /gateway/status."""
        return {"name": self.name, "url": self.url, "local": self.local, "pid": self.pid, "healthy": self.healthy,
                "available": self.available(now), "ejected_for_s": max(0.0, self.ejected_until - now),
                "in_flight": self.in_flight, "waiting": self.waiting, "running": self.running,
                "others": self.others, "kv_usage": self.kv_usage, "consecutive_failures": self.consecutive_failures,
                "restarts": self.restarts, "start_s": self.start_s, "draining": self.draining}


@dataclass(eq=False)
class Group:
    """A model group: its backends, its router and the bookkeeping routing and ejection share."""

    name: str
    config: GroupConfig
    metrics: GatewayMetrics
    backends: list[Backend] = field(default_factory=list)
    router: Router | None = None

    @classmethod
    def from_config(cls, name: str, config: GroupConfig, metrics: GatewayMetrics) -> Group:
        group = cls(name, config, metrics, router=build_router(config.routing))
        if config.autoscaling is None:  # else its one backend is the template of the replicas (autoscale/local.py)
            for i, backend_config in enumerate(config.backends):
                group.add(Backend(backend_config.name or f"{name}-{i}", backend_config, url=backend_config.url))
        return group

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        labels = {"group": self.name, "backend": backend.name}
        # Read at scrape time, so the gauges can never drift from the state they report.
        self.metrics.in_flight.labels(**labels).set_function(lambda b=backend: b.in_flight)
        self.metrics.healthy.labels(**labels).set_function(lambda b=backend: float(b.available(time.monotonic())))

    def remove(self, backend: Backend) -> None:
        """Takes a backend out for good (an autoscaled replica stopped), with its gauges and affinity."""
        self.backends.remove(backend)
        for gauge in (self.metrics.in_flight, self.metrics.healthy):
            with contextlib.suppress(KeyError):
                gauge.remove(self.name, backend.name)
        if self.router is not None:
            self.router.forget(backend.name)

    def candidates(self, now: float, exclude: set[str] = frozenset(),
                   on_premises_only: bool = False) -> list[Backend]:
        return [b for b in self.backends
                if b.available(now) and b.name not in exclude and (b.on_premises or not on_premises_only)]

    def record_success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0

    def record_failure(self, backend: Backend, now: float) -> None:
        """A connect error, timeout or 5xx: past the threshold in a row, the backend is ejected for a cool-down."""
        backend.consecutive_failures += 1
        ejection = self.config.ejection
        if backend.consecutive_failures >= ejection.consecutive_failures and now >= backend.ejected_until:
            backend.ejected_until = now + ejection.cooldown_s
            backend.consecutive_failures = 0
            self.metrics.ejections.labels(group=self.name, backend=backend.name).inc()
            logger.warning("backend %s ejected for %.1f s after %d consecutive failures", backend.name,
                           ejection.cooldown_s, ejection.consecutive_failures)

    def mark_down(self, backend: Backend) -> None:
        """The backend lost its state (a replica exited): out of routing, and its affinity forgotten."""
        backend.url, backend.healthy, backend.pid = (None if backend.local else backend.url), False, None
        backend.waiting = backend.running = backend.others = backend.kv_usage = 0.0
        if self.router is not None:
            self.router.forget(backend.name)


class Monitor:
    """Active health checks of every backend's ``/health`` and the scrape of its ``/metrics``, each on its
    group's interval, as tasks that run until ``stop`` (or ``unwatch``, for a backend the autoscaler removes)."""

    def __init__(self, groups: list[Group], client: httpx.AsyncClient):
        self.groups = groups
        self.client = client
        self.tasks: dict[Backend, list[asyncio.Task]] = {}

    def start(self) -> None:
        for group in self.groups:
            for backend in group.backends:
                self.watch(group, backend)

    def watch(self, group: Group, backend: Backend) -> None:
        tasks = self.tasks.setdefault(backend, [])
        tasks.append(asyncio.create_task(self._health_loop(group, backend)))
        if backend.config.scrape_metrics:
            tasks.append(asyncio.create_task(self._scrape_loop(group, backend)))

    async def unwatch(self, backend: Backend) -> None:
        tasks = self.tasks.pop(backend, [])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        for backend in list(self.tasks):
            await self.unwatch(backend)

    async def _health_loop(self, group: Group, backend: Backend) -> None:
        health = group.config.health
        num_failed = 0
        while True:
            url = backend.url
            if url is not None:
                passed = await check_health(self.client, url, health.timeout_s)
                num_failed = 0 if passed else num_failed + 1
                if backend.url == url:  # not replaced by a restart meanwhile
                    if passed and not backend.healthy:
                        logger.info("backend %s is healthy", backend.name)
                        backend.healthy = True
                    elif backend.healthy and num_failed >= health.unhealthy_after:
                        logger.warning("backend %s failed %d health checks", backend.name, num_failed)
                        backend.healthy = False
            await asyncio.sleep(health.interval_s)

    async def _scrape_loop(self, group: Group, backend: Backend) -> None:
        health = group.config.health
        while True:
            url = backend.url
            if url is not None and backend.healthy:
                sent_before = backend.in_flight
                values = await scrape_load(self.client, url, health.timeout_s)
                if values is not None and backend.url == url:
                    record_load(backend, values, sent_before)
            await asyncio.sleep(health.metrics_interval_s)


def record_load(backend: Backend, values: dict[str, float], sent_before: int) -> None:
    """Stores a scrape's gauges. The replica's running and waiting requests include this gateway's own, those in
    flight while it was asked (``sent_before`` when the scrape began, ``in_flight`` now: the larger is taken, so
    other clients' load is never overstated); what is left over is other clients'."""
    backend.waiting = values.get("waiting", 0.0)
    backend.running = values.get("running", 0.0)
    backend.kv_usage = values.get("kv_usage", 0.0)
    ours = max(sent_before, backend.in_flight)
    backend.others = max(0.0, backend.running + backend.waiting - ours)


async def check_health(client: httpx.AsyncClient, url: str, timeout_s: float) -> bool:
    try:
        response = await client.get(url + "/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def scrape_load(client: httpx.AsyncClient, url: str, timeout_s: float) -> dict[str, float] | None:
    """The replica's waiting, running and KV usage gauges, or None when its /metrics cannot be read."""
    try:
        response = await client.get(url + "/metrics", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return parse_load(response.text)


def parse_load(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        key = _SCRAPED.get(name)
        if key is not None:
            with contextlib.suppress(ValueError):
                values[key] = float(value.split()[0])
    return values
