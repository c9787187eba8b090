"""A group's bookkeeping: passive ejection after consecutive failures and its cool-down, a replica going down
forgetting its affinity, and the load gauges read from a replica's /metrics text."""

from __future__ import annotations

from corral.gateway.backends import Group, parse_load, record_load
from corral.gateway.config import GroupConfig
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.routing import RouteRequest, load_of


def group_of(**overrides) -> Group:
    config = GroupConfig.model_validate({"backends": [{"url": "http://a"}, {"url": "http://b"}], **overrides})
    group = Group.from_config("g", config, GatewayMetrics())
    for backend in group.backends:
        backend.healthy = True
    return group


def test_consecutive_failures_eject_a_backend_for_its_cool_down():
    group = group_of(ejection={"consecutive_failures": 3, "cooldown_s": 10})
    a, b = group.backends
    group.record_failure(a, 0)
    group.record_failure(a, 0)
    group.record_success(a)  # not consecutive any more
    group.record_failure(a, 1)
    group.record_failure(a, 1)
    assert group.candidates(1) == [a, b]
    group.record_failure(a, 2)
    assert group.candidates(2) == [b] and group.candidates(11.9) == [b]
    assert group.candidates(12) == [a, b]
    assert group.metrics.ejections.labels(group="g", backend="g-0")._value.get() == 1
    assert group.candidates(12, exclude={"g-1"}) == [a]


def test_an_unhealthy_backend_is_no_candidate():
    group = group_of()
    group.backends[0].healthy = False
    assert group.candidates(0) == [group.backends[1]]


def test_mark_down_forgets_the_backends_prefixes_and_load():
    group = group_of(routing={"policy": "prefix_aware"})
    prompt = RouteRequest("a long shared system prompt, " * 10)
    home = group.router.pick(prompt, group.backends, 0).backend
    assert group.router.pick(prompt, group.backends, 1).reason == "prefix_hit"
    home.waiting, home.others = 5, 5
    group.mark_down(home)
    assert home.waiting == 0 and home.others == 0 and not home.healthy
    home.healthy = True  # url backends keep their url; a health check brings them back
    assert group.router.pick(prompt, group.backends, 2).reason == "prefix_miss"


def test_parse_load_reads_the_replica_gauges():
    text = ("# HELP corral:num_requests_running Sequences running.\n# TYPE corral:num_requests_running gauge\n"
            "corral:num_requests_running 3.0\ncorral:num_requests_waiting 7.0\ncorral:kv_cache_usage_perc 0.25\n"
            "corral:prefix_cache_hits_total 12.0\n")
    assert parse_load(text) == {"running": 3.0, "waiting": 7.0, "kv_usage": 0.25}


def test_a_scrape_counts_other_clients_requests_but_not_this_gateways_own():
    backend = group_of().backends[0]
    backend.in_flight = 3
    record_load(backend, {"running": 3.0, "waiting": 1.0, "kv_usage": 0.5}, sent_before=2)
    assert backend.others == 1 and load_of(backend, 4.0) == 3 + 1 + 2  # one request is another client's
    record_load(backend, {"running": 1.0, "waiting": 0.0}, sent_before=3)  # ours not all arrived yet
    assert backend.others == 0 and load_of(backend, 4.0) == 3
    backend.in_flight = 0  # ours finished since: the stale count is not kept as load
    assert load_of(backend, 4.0) == 0
