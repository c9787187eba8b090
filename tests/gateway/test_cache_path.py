"""The response cache in the request path, through a real gateway over a real tiny-model replica: a repeated
temperature-0 request is a hit (byte-identical, or the same text replayed as a stream), ``Cache-Control:
no-cache`` bypasses, a sampled request is never cached, entries expire, the Redis backend hits the same way, and
/metrics counts it all. The hit latency at the gateway is printed (docs/gateway-cache.md keeps the figure)."""

from __future__ import annotations

import json
import statistics
import time

import httpx
import openai
import pytest

from .conftest import sse_events


@pytest.fixture(scope="module")
def replica(corral_serve_module) -> str:
    return corral_serve_module("--served-model-name", "tiny", "--max-model-len", "512",
                               "--kv-cache-memory", str(32 * 1024**2))


def cached_gateway(run_gateway, replica: str, **cache):
    gateway = run_gateway({"groups": {"tiny": {"backends": [{"url": replica}], "health": {"interval_s": 0.2}}},
                           "cache": {"enabled": True, **cache}})
    gateway.wait_available("tiny", 1)
    return gateway


def post(gateway, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(gateway.base_url + "/v1/completions", json=body, headers=headers, timeout=60)


BODY = {"model": "tiny", "prompt": "The bakery opens at", "max_tokens": 12, "temperature": 0}


def wait_stores(gateway, count: int) -> None:
    """The store runs once the answer is sent, so just after the client has it."""
    deadline = time.monotonic() + 10
    while gateway.gateway.cache.stats.stores < count:
        assert time.monotonic() < deadline, gateway.gateway.cache.stats
        time.sleep(0.01)


def test_a_repeated_deterministic_request_is_a_byte_identical_hit(run_gateway, replica):
    gw = cached_gateway(run_gateway, replica)
    first = post(gw, BODY)
    assert first.status_code == 200 and first.headers["x-corral-cache"] == "miss"
    wait_stores(gw, 1)
    second = post(gw, BODY)
    assert second.headers["x-corral-cache"] == "hit" and second.content == first.content
    c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
    assert c.completions.create(**BODY).choices[0].text == first.json()["choices"][0]["text"]
    assert gw.metric("corral_gateway_cache_hits_total") == 2
    assert gw.metric("corral_gateway_cache_misses_total") == 1
    assert gw.metric("corral_gateway_cache_stores_total") == 1
    assert gw.metric("corral_gateway_cache_bytes") > 0

    latencies = []
    with httpx.Client(base_url=gw.base_url, timeout=10) as kept_alive:
        for _ in range(60):
            started = time.perf_counter()
            response = kept_alive.post("/v1/completions", json=BODY)
            latencies.append(time.perf_counter() - started)
            assert response.headers["x-corral-cache"] == "hit"
    print(f"\ncache hit latency at the client (median of 50 after 10 warm-up): "
          f"{statistics.median(latencies[10:]) * 1000:.2f} ms")


def stream_text(gateway, body: dict) -> tuple[str, httpx.Headers]:
    with httpx.stream("POST", gateway.base_url + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as response:
        events = sse_events(list(response.iter_lines()))
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]), response.headers


def test_a_stream_is_stored_and_replayed_as_a_stream_and_a_body(run_gateway, replica):
    gw = cached_gateway(run_gateway, replica)
    text, headers = stream_text(gw, BODY)
    assert headers["x-corral-cache"] == "miss" and text
    wait_stores(gw, 1)
    replayed, headers = stream_text(gw, BODY)
    assert headers["x-corral-cache"] == "hit" and replayed == text
    body = post(gw, BODY)
    assert body.headers["x-corral-cache"] == "hit" and body.json()["choices"][0]["text"] == text


def test_no_cache_bypasses_and_sampled_requests_are_never_cached(run_gateway, replica):
    gw = cached_gateway(run_gateway, replica)
    post(gw, BODY)
    wait_stores(gw, 1)
    assert post(gw, BODY, **{"cache-control": "no-cache"}).headers["x-corral-cache"] == "bypass"
    sampled = {**BODY, "temperature": 0.8}
    for _ in range(2):
        assert post(gw, sampled).headers["x-corral-cache"] == "bypass"
    time.sleep(0.2)
    stats = gw.gateway.cache.stats
    assert stats.hits == 0 and stats.uncacheable == 2 and stats.bypasses == 1
    assert gw.metric("corral_gateway_cache_uncacheable_total") == 2


def test_an_entry_expires_after_its_ttl(run_gateway, replica):
    gw = cached_gateway(run_gateway, replica, ttl_s=0.5)
    post(gw, BODY)
    wait_stores(gw, 1)
    assert post(gw, BODY).headers["x-corral-cache"] == "hit"
    time.sleep(0.7)
    assert post(gw, BODY).headers["x-corral-cache"] == "miss"
    assert gw.metric("corral_gateway_cache_expirations_total") == 1


def test_the_redis_backend_hits_the_same_way(run_gateway, replica, redis_url):
    gw = cached_gateway(run_gateway, replica, backend="redis", redis_url=redis_url, namespace=f"t{time.time()}")
    first = post(gw, BODY)
    assert first.headers["x-corral-cache"] == "miss"
    wait_stores(gw, 1)
    second = post(gw, BODY)
    assert second.headers["x-corral-cache"] == "hit" and second.content == first.content
    # A second gateway sharing the Redis namespace hits too.
    other = run_gateway({"groups": {"tiny": {"backends": [{"url": replica}]}},
                         "cache": {"enabled": True, "backend": "redis", "redis_url": redis_url,
                                   "namespace": gw.gateway.config.cache.namespace}})
    assert post(other, BODY).content == first.content
