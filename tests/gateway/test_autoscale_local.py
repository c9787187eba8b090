"""The local autoscaling backend's controller (corral/gateway/autoscale/local.py) on a fake clock: which replicas it
starts, drains, takes back and stops for each decision, that a replica counts only once healthy, the host cap
and its one log line, the cold start. The replica processes here are stand-ins that come up when the test says
(the real ones, under a real gateway: test_autoscale_gateway.py); the memory measured is this test process's own,
read from /proc."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import pytest

from corral.gateway.autoscale.local import LocalScaler
from corral.gateway.autoscale.resources import HostResources, read_host, replica_cap, tree_rss_bytes
from corral.gateway.backends import Backend, Group
from corral.gateway.config import GatewayConfigError, parse_config
from corral.gateway.errors import GatewayError
from corral.gateway.fallback import on_premises_reachable
from corral.gateway.metrics import GatewayMetrics

GIB = 1024**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StandIn:
    """A replica process that is "up" when ``up()`` is called (or at once, ``instant``); its pid is this process's."""

    def __init__(self, backend: Backend, instant: bool):
        self.backend, self.instant, self.stopped = backend, instant, False

    def start(self) -> None:
        self.backend.pid = os.getpid()
        if self.instant:
            self.up()

    def up(self) -> None:
        self.backend.url, self.backend.healthy = f"http://stand-in/{self.backend.name}", True

    async def stop(self) -> None:
        self.stopped = True
        self.backend.url, self.backend.healthy, self.backend.pid = None, False, None


def scaler_for(autoscaling: dict, instant: bool = True, host: Callable[[], HostResources] | None = None,
               replicas: dict | None = None) -> tuple[LocalScaler, FakeClock, list[StandIn]]:
    config = parse_config({"groups": {"g": {"backends": [{"local": ["--model", "m"]}], "autoscaling": autoscaling,
                                            "replicas": {"drain_timeout_s": 30, **(replicas or {})}}}})
    metrics = GatewayMetrics()
    group = Group.from_config("g", config.groups["g"], metrics)
    clock, made = FakeClock(), []

    def spawn(group: Group, backend: Backend) -> StandIn:
        made.append(StandIn(backend, instant))
        return made[-1]

    return LocalScaler(group, metrics, spawn, host=host or (lambda: HostResources(64 * GIB, 64)), clock=clock), clock, made


def metric(scaler: LocalScaler, name: str, **labels: str) -> float:
    return scaler.metrics.registry.get_sample_value(name, {"group": "g", **labels}) or 0.0


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0.06)  # a drain polls every 0.05 s


FAST = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2, "look_back_period_s": 1,
        "upscale_delay_s": 5, "downscale_delay_s": 10}


def test_scale_up_waits_its_delay_and_counts_a_replica_only_once_healthy():
    async def main() -> None:
        scaler, clock, made = scaler_for(FAST, instant=False)
        scaler.tick()  # initial_replicas: 1, started at once
        assert len(made) == 1 and scaler.count("starting") == 1 and scaler.sample().replicas == ()
        made[0].up()
        first = scaler.replicas[0].backend
        first.in_flight = 8  # 8 ongoing on one replica, target 2: 4 wanted, capped at 3
        for _ in range(5):
            assert scaler.tick().desired == 1 and len(made) == 1
            clock.now += 1
        decision = scaler.tick()
        assert decision.desired == 3 and "scale up 1 -> 3" in decision.reason
        assert len(made) == 3 and scaler.count("starting") == 2 and scaler.count("ready") == 1
        assert len(scaler.sample().replicas) == 1  # the two starting ones are not load-bearing yet
        assert metric(scaler, "corral_gateway_autoscale_events_total", direction="up",
                      reason="ongoing_requests") == 1
        assert metric(scaler, "corral_gateway_autoscale_desired_replicas") == 3
        assert metric(scaler, "corral_gateway_autoscale_replicas", state="starting") == 2
        assert scaler.replica_bytes > 0  # this process's, measured once its stand-in was ready
        await scaler.stop()
        assert all(process.stopped for process in made) and scaler.group.backends == []

    asyncio.run(main())


def test_replicas_of_unmeasured_size_start_one_at_a_time():
    async def main() -> None:
        scaler, _, made = scaler_for({**FAST, "initial_replicas": 3}, instant=False)
        scaler.tick()
        scaler.tick()
        assert len(made) == 1  # its memory unknown until the first has run
        made[0].up()
        scaler.tick()  # measured now: the other two together
        assert len(made) == 3 and scaler.replica_bytes > 0
        await scaler.stop()

    asyncio.run(main())


def test_scale_down_drains_the_least_busy_replica_then_stops_it_once_its_requests_are_done():
    async def main() -> None:
        scaler, clock, made = scaler_for({**FAST, "initial_replicas": 2})
        scaler.tick()
        scaler.tick()
        busy, quiet = (replica.backend for replica in scaler.replicas)
        busy.in_flight = 2  # 2 ongoing, target 2: one replica is enough
        for _ in range(10):
            scaler.tick()
            clock.now += 1
        busy.in_flight, quiet.in_flight = 1, 1  # equally busy now: the newer one goes
        decision = scaler.tick()
        assert decision.desired == 1 and "scale down 2 -> 1" in decision.reason
        assert quiet.draining and not busy.draining
        assert scaler.group.candidates(0) == [busy]  # routing skips it at once
        await settle()
        assert not made[1].stopped and quiet in scaler.group.backends  # its request is still in flight
        clock.now += 2
        quiet.in_flight = 0
        await settle()
        assert made[1].stopped and scaler.group.backends == [busy]
        assert scaler.metrics.registry.get_sample_value("corral_gateway_backend_in_flight",
                                                        {"group": "g", "backend": quiet.name}) is None
        assert metric(scaler, "corral_gateway_replica_drain_seconds_count") == 1
        assert metric(scaler, "corral_gateway_replica_drain_seconds_sum") == pytest.approx(2)
        await scaler.stop()

    asyncio.run(main())


def test_a_drain_ends_at_its_timeout_and_a_draining_replica_is_taken_back_before_a_new_one_starts(caplog):
    async def main() -> None:
        scaler, clock, made = scaler_for({**FAST, "initial_replicas": 2, "downscale_delay_s": 0,
                                          "upscale_delay_s": 0})
        scaler.tick()
        scaler.replicas[0].backend.in_flight = 4  # keeps 2 wanted
        scaler.tick()
        first, second = (replica.backend for replica in scaler.replicas)
        first.in_flight, second.in_flight = 1, 1
        clock.now += 1
        assert scaler.tick().desired == 1 and second.draining and not first.draining
        first.in_flight = 8  # busy again: the draining one is taken back, and one more started
        clock.now += 1
        assert scaler.tick().desired == 3
        assert not second.draining and len(made) == 3
        first.in_flight = second.in_flight = 0
        clock.now += 1
        assert scaler.tick().desired == 1
        draining = [replica for replica in scaler.replicas if replica.backend.draining]
        assert len(draining) == 2 and first not in [replica.backend for replica in draining]
        draining[0].backend.in_flight = 5  # never finishes: stopped at drain_timeout_s
        await settle()
        assert not draining[0].process.stopped and draining[1].process.stopped
        clock.now += 31
        with caplog.at_level(logging.WARNING, logger="corral.gateway"):
            await settle()
        assert draining[0].process.stopped and "still had 5 requests in flight" in caplog.text
        await scaler.stop()

    asyncio.run(main())


def test_replica_names_are_reused_so_metric_series_stay_as_many_as_the_replicas_at_once():
    async def main() -> None:
        scaler, clock, _ = scaler_for({**FAST, "downscale_delay_s": 0, "upscale_delay_s": 0})
        scaler.tick()
        for _ in range(4):  # up to 3 and back to 1, four times
            scaler.replicas[0].backend.in_flight = 8
            clock.now += 1
            assert scaler.tick().desired == 3
            for replica in scaler.replicas:
                replica.backend.in_flight = 0
                scaler.metrics.restarts.labels(group="g", backend=replica.backend.name).inc()
            clock.now += 1
            assert scaler.tick().desired == 1
            await settle()
            assert len(scaler.replicas) == 1
        series = {sample.labels["backend"] for family in scaler.metrics.registry.collect()
                  for sample in family.samples if "backend" in sample.labels}
        assert series == {"g-0", "g-1", "g-2"}
        await scaler.stop()

    asyncio.run(main())


def test_the_host_cap_holds_the_group_and_says_so_once(caplog):
    async def main() -> None:
        one = tree_rss_bytes(os.getpid())

        def host() -> HostResources:  # room for two replicas of this process's size beyond the reserve
            return HostResources(int(2.5 * one) + GIB // 2 - len(made) * one, 64)

        scaler, clock, made = scaler_for({**FAST, "upscale_delay_s": 0}, host=host,
                                         replicas={"reserve_memory_bytes": GIB // 2})
        scaler.tick()
        scaler.replicas[0].backend.in_flight = 8
        with caplog.at_level(logging.WARNING, logger="corral.gateway"):
            for _ in range(4):
                clock.now += 1
                decision = scaler.tick()
        assert decision.desired == 2 and len(made) == 2
        assert "capped by memory: 2 replicas of" in decision.reason
        lines = [r.message for r in caplog.records if "capped" in r.message]
        assert len(lines) == 1 and lines[0].startswith("autoscale g: the policy asks for 3 replicas; capped at 2 by "
                                                       "memory: 2 replicas of")
        assert metric(scaler, "corral_gateway_autoscale_capped_total", resource="memory") == 1
        assert metric(scaler, "corral_gateway_autoscale_max_replicas") == 2
        await scaler.stop()

    asyncio.run(main())


def test_a_request_at_zero_replicas_starts_one_and_waits_for_it():
    async def main() -> None:
        scaler, _, made = scaler_for({"min_replicas": 0, "max_replicas": 2, "upscale_delay_s": 60}, instant=False)
        scaler.start()
        await asyncio.sleep(0.1)
        assert made == []
        waiter = asyncio.create_task(scaler.wait_for_replica(asyncio.get_running_loop().time() + 30))
        await asyncio.sleep(0.1)  # woken at once, not after metrics_interval_s: no upscale delay either
        assert len(made) == 1 and scaler.num_waiting == 1 and not waiter.done()
        assert scaler.last_decision.signal == "cold_start"
        made[0].up()
        await asyncio.wait_for(waiter, 1)
        assert scaler.num_waiting == 0
        assert metric(scaler, "corral_gateway_autoscale_events_total", direction="up", reason="cold_start") == 1
        await scaler.stop()

    asyncio.run(main())


def test_replica_cap_from_memory_and_cores():
    host = HostResources(10 * GIB, 8)
    cap, resource = replica_cap(1, 0, 2 * GIB, host, GIB, 1)  # 9 GiB beyond the reserve: 4 more of 2 GiB
    assert (cap.max_replicas, resource) == (5, "memory")
    assert cap.reason.startswith("memory: 5 replicas of 2.00 GiB fit (1 live; 9.00 GiB available")
    cap, resource = replica_cap(2, 3 * GIB, 2 * GIB, host, GIB, 1)  # starting replicas will take 3 more
    assert cap.max_replicas == 5 and "3.00 GiB that starting replicas will still take" in cap.reason
    assert replica_cap(1, 0, GIB // 4, host, GIB, 2)[0].reason == "cores: 4 replicas of 2 cores fit in 8 cores"
    assert replica_cap(0, 0, None, host, GIB, 1)[1] == "cores"  # size unknown: memory bounds nothing yet
    assert replica_cap(3, 0, None, HostResources(GIB, 8), GIB, 1)[0].max_replicas == 3  # none beyond the reserve
    assert replica_cap(9, 0, GIB, HostResources(0, 8), 0, 1)[0].max_replicas == 8  # never under the live count by memory
    assert replica_cap(0, 0, GIB, HostResources(None, 3), 0, 0.5)[0].max_replicas == 6
    live = read_host()
    assert live.num_cores >= 1 and (live.mem_available_bytes is None or live.mem_available_bytes > 0)


def test_an_autoscaling_section_is_refused_where_it_cannot_apply():
    def refusal(group: dict) -> str:
        with pytest.raises(GatewayConfigError) as error:
            parse_config({"groups": {"g": {"autoscaling": {"max_replicas": 2}, **group}}}, "gateway.yaml")
        return str(error.value)

    assert refusal({"backends": [{"url": "http://10.0.0.1:8000"}]}) == (
        "gateway.yaml: groups.g.autoscaling: backends.0 is a `url` backend; the gateway scales only local replicas "
        "(scale a remote server where it runs)")
    assert refusal({"backends": [{"local": ["--model", "a"]}, {"local": ["--model", "b"]}]}).startswith(
        "gateway.yaml: groups.g.autoscaling: an autoscaled group lists exactly one backend")
    assert refusal({"backends": [{"local": ["--model", "a"]}], "replicas": {"drain_timeout_s": -1}}).startswith(
        "gateway.yaml: groups.g.replicas.drain_timeout_s: ")
    parsed = parse_config({"groups": {"g": {"backends": [{"local": ["--model", "a"]}],
                                            "autoscaling": {"max_replicas": 4, "min_replicas": 0}}}})
    assert parsed.groups["g"].autoscaling.scale_to_zero


def test_a_group_at_zero_replicas_is_still_on_premises_for_local_only_tenants():
    scaler, _, _ = scaler_for({"min_replicas": 0, "max_replicas": 2})
    assert scaler.group.backends == [] and on_premises_reachable({"g": scaler.group}, "g")


def test_a_request_at_zero_replicas_on_a_host_that_fits_none_is_refused_at_once():
    async def main() -> None:
        # One core and a replica asking for two: the host fits none, so a request must not wait out its deadline.
        scaler, _, made = scaler_for({**FAST, "min_replicas": 0, "initial_replicas": 0},
                                     host=lambda: HostResources(64 * GIB, 1), replicas={"cores_per_replica": 2})
        scaler.tick()
        assert made == [] and scaler.ceiling == 0
        start = asyncio.get_running_loop().time()
        with pytest.raises(GatewayError) as refused:
            await scaler.wait_for_replica(asyncio.get_running_loop().time() + 30)
        assert (refused.value.status, refused.value.code) == (503, "no_capacity")
        assert "fits none" in refused.value.message and "cores" in refused.value.message
        assert asyncio.get_running_loop().time() - start < 5
        await scaler.stop()

    asyncio.run(main())
