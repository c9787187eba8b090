"""The response cache as the gateway calls it (GatewayCache), on both stores: hit, miss, TTL expiry, no-cache,
no-store, sampled requests, SSE replay of a hit, tenants; LRU bounds (memory); Redis down (a miss, never an
error); the get() latency of a 2 KB answer, printed."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid

import pytest

from corral.gateway.cache import CacheConfig, GatewayCache, MemoryCache, RedisCache
from corral.gateway.cache_sse import assemble_from_sse
from corral.gateway.cache_store import CachedResponse
from tests.gateway.test_cache_sse import CORRAL_TOOL_STREAM

from .conftest import free_port, start_redis, stop_redis

CHAT = "/v1/chat/completions"
BODY = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 8}
ANSWER = json.dumps({
    "id": "chatcmpl-42", "object": "chat.completion", "created": 1765000000, "model": "smol",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help?"},
                 "finish_reason": "stop", "stop_reason": None, "logprobs": None}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
}).encode()
NO_CACHE = {"Cache-Control": "no-cache"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Builds a GatewayCache on one store; ``expire`` waits out (memory: jumps over) the TTL."""

    def __init__(self, name: str, redis_url: str | None):
        self.name, self.redis_url, self.clock = name, redis_url, FakeClock()

    def make(self, **config) -> GatewayCache:
        config = {"enabled": True, "ttl_s": 60.0} | config
        if self.name == "memory":
            cfg = CacheConfig(**config)
            return GatewayCache(cfg, MemoryCache(cfg.ttl_s, cfg.max_entries, cfg.max_bytes, clock=self.clock))
        # a namespace per cache: tests never see each other's entries in the shared server
        return GatewayCache(CacheConfig(backend="redis", redis_url=self.redis_url,
                                        namespace=f"test:{uuid.uuid4().hex}", **config))

    async def expire(self, cache: GatewayCache, plan) -> None:
        if self.name == "memory":
            self.clock.now += cache.config.ttl_s + 1e-3
            return
        deadline = time.monotonic() + 5  # Redis expires a PX 1000 key within about a second
        while await RedisCache.get(cache.store, plan.key) is not None and time.monotonic() < deadline:  # type: ignore[arg-type]
            await asyncio.sleep(0.1)


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> Backend:
    return Backend(request.param, request.getfixturevalue("redis_url") if request.param == "redis" else None)


def run(coro):
    return asyncio.run(coro)


def test_miss_then_hit_byte_identical(backend):
    async def scenario():
        cache = backend.make()
        plan = cache.plan("g", CHAT, BODY, {})
        assert plan.lookup and plan.store and plan.key
        assert await cache.lookup(plan) is None
        assert await cache.store_response(plan, ANSWER)
        again = cache.plan("g", CHAT, dict(reversed(BODY.items())), {})  # same request, fields reordered
        entry = await cache.lookup(again)
        assert entry is not None and entry.body == ANSWER and entry.content_type == "application/json"
        assert cache.render(again, entry) == (ANSWER, "application/json")
        assert (cache.stats.hits, cache.stats.misses, cache.stats.stores) == (1, 1, 1)
        assert cache.stats.bytes_stored == len(ANSWER) + len("application/json")
        assert await cache.lookup(cache.plan("g", CHAT, BODY | {"max_tokens": 9}, {})) is None
        await cache.close()
    run(scenario())


def test_ttl_expiry(backend):
    async def scenario():
        cache = backend.make(ttl_s=1.0)
        plan = cache.plan("g", CHAT, BODY, {})
        await cache.store_response(plan, ANSWER)
        assert await cache.lookup(plan) is not None
        await backend.expire(cache, plan)
        assert await cache.lookup(plan) is None
        await cache.close()
    run(scenario())


def test_no_cache_skips_the_lookup_and_stores_the_fresh_answer(backend):
    async def scenario():
        cache = backend.make()
        await cache.store_response(cache.plan("g", CHAT, BODY, {}), ANSWER)
        bypass = cache.plan("g", CHAT, BODY, NO_CACHE)
        assert not bypass.lookup and bypass.store
        assert await cache.lookup(bypass) is None
        assert (cache.stats.hits, cache.stats.misses, cache.stats.bypasses) == (0, 0, 1)
        fresh = ANSWER.replace(b"chatcmpl-42", b"chatcmpl-43")
        assert await cache.store_response(bypass, fresh)
        entry = await cache.lookup(cache.plan("g", CHAT, BODY, {}))
        assert entry is not None and entry.body == fresh
        await cache.close()
    run(scenario())


def test_no_store_keeps_the_answer_out(backend):
    async def scenario():
        cache = backend.make()
        plan = cache.plan("g", CHAT, BODY, {"cache-control": "no-store"})
        assert plan.lookup and not plan.store
        assert not await cache.store_response(plan, ANSWER)
        assert not await cache.store_stream(plan, CORRAL_TOOL_STREAM)
        assert await cache.lookup(cache.plan("g", CHAT, BODY, {})) is None
        assert cache.stats.stores == 0
        await cache.close()
    run(scenario())


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7}, {"temperature": 0.7, "seed": None}, {"temperature": None}])
def test_sampled_requests_are_never_cached(backend, sampling):
    async def scenario():
        cache = backend.make()
        body = {k: v for k, v in BODY.items() if k != "temperature"} | sampling
        plan = cache.plan("g", CHAT, body, {})
        assert plan.key is None and not plan.lookup and not plan.store
        assert not await cache.store_response(plan, ANSWER)
        assert await cache.lookup(cache.plan("g", CHAT, body, {})) is None
        assert (cache.stats.stores, cache.stats.uncacheable) == (0, 2)
        sampled_ok = backend.make(cache_sampled=True)
        assert await sampled_ok.store_response(sampled_ok.plan("g", CHAT, body, {}), ANSWER)
        assert await sampled_ok.lookup(sampled_ok.plan("g", CHAT, body, {})) is not None
        seeded = cache.plan("g", CHAT, body | {"seed": 7}, {})
        assert await cache.store_response(seeded, ANSWER) and await cache.lookup(seeded) is not None
        await cache.close()
        await sampled_ok.close()
    run(scenario())


def test_disabled_cache_does_nothing(backend):
    async def scenario():
        cache = backend.make(enabled=False)
        plan = cache.plan("g", CHAT, BODY, {})
        assert plan.key is None and not await cache.store_response(plan, ANSWER)
        await cache.close()
    run(scenario())


def test_streaming_request_is_answered_with_sse_and_a_stream_fills_the_cache(backend):
    async def scenario():
        cache = backend.make()
        stream_plan = cache.plan("g", CHAT, BODY | {"stream": True}, {})
        assert await cache.lookup(stream_plan) is None  # stream is not in the key: the same entry as non-stream
        assert await cache.store_stream(stream_plan, CORRAL_TOOL_STREAM)
        plain = cache.plan("g", CHAT, BODY, {})
        entry = await cache.lookup(plain)
        assert entry is not None
        assert json.loads(entry.body) == assemble_from_sse(CORRAL_TOOL_STREAM, CHAT)
        usage_plan = cache.plan("g", CHAT, BODY | {"stream": True, "stream_options": {"include_usage": True}}, {})
        events, media = cache.render(usage_plan, await cache.lookup(usage_plan))
        events = list(events)
        assert media == "text/event-stream" and events[-1] == b"data: [DONE]\n\n"
        assert assemble_from_sse(events, CHAT) == json.loads(entry.body)
        quiet, _ = cache.render(stream_plan, entry)
        assert b'"usage"' not in b"".join(quiet)  # include_usage not asked: no usage chunk
        await cache.close()
    run(scenario())


@pytest.mark.parametrize("stream", [
    CORRAL_TOOL_STREAM[:-1],  # cut before [DONE] (a client disconnect, a dying backend)
    CORRAL_TOOL_STREAM[:2] + [b'data: {"error": {"message": "backend died"}}\n\n', b"data: [DONE]\n\n"],
])
def test_broken_streams_and_odd_answers_are_not_stored(backend, stream):
    async def scenario():
        cache = backend.make()
        plan = cache.plan("g", CHAT, BODY, {})
        assert not await cache.store_stream(plan, stream)
        assert not await cache.store_response(plan, b'{"error": {"message": "x"}}')
        assert not await cache.store_response(plan, b"not json")
        big = backend.make(max_entry_bytes=len(ANSWER) - 1)
        assert not await big.store_response(big.plan("g", CHAT, BODY, {}), ANSWER)
        assert await cache.lookup(plan) is None and cache.stats.stores == 0
        assert cache.stats.unreplayable == 3
        await cache.close()
        await big.close()
    run(scenario())


def test_tenants_never_share_an_entry(backend):
    async def scenario():
        cache = backend.make()
        await cache.store_response(cache.plan("g", CHAT, BODY, {}, tenant="acme"), ANSWER)
        assert await cache.lookup(cache.plan("g", CHAT, BODY, {}, tenant="acme")) is not None
        assert await cache.lookup(cache.plan("g", CHAT, BODY, {}, tenant="globex")) is None
        assert await cache.lookup(cache.plan("g", CHAT, BODY, {})) is None
        await cache.close()
    run(scenario())


def entry(size: int) -> CachedResponse:
    return CachedResponse(b"x" * (size - len("application/json")))


def test_memory_lru_by_entries():
    async def scenario():
        cache = MemoryCache(ttl_s=60, max_entries=2, max_bytes=10**6)
        await cache.put("a", entry(100))
        await cache.put("b", entry(100))
        assert await cache.get("a") is not None  # a is now the most recent
        await cache.put("c", entry(100))
        assert "b" not in cache and "a" in cache and "c" in cache
        assert (cache.stats.evictions, cache.stats.entries, cache.stats.bytes_held) == (1, 2, 200)
    run(scenario())


def test_memory_lru_by_bytes():
    async def scenario():
        cache = MemoryCache(ttl_s=60, max_entries=100, max_bytes=250)
        await cache.put("a", entry(100))
        await cache.put("b", entry(100))
        await cache.put("c", entry(100))
        assert "a" not in cache and len(cache) == 2 and cache.stats.bytes_held == 200
        await cache.put("huge", entry(251))  # larger than the whole cache: not stored, nothing evicted
        assert "huge" not in cache and len(cache) == 2
        await cache.put("b", entry(150))  # replacing an entry frees its old bytes first
        assert cache.stats.bytes_held == 250 and len(cache) == 2
        await cache.close()
        assert cache.stats.bytes_held == 0
    run(scenario())


def test_memory_ttl_counts_expirations():
    async def scenario():
        clock = FakeClock()
        cache = MemoryCache(ttl_s=10, max_entries=10, max_bytes=10**6, clock=clock)
        await cache.put("a", entry(100))
        clock.now += 9.999
        assert await cache.get("a") is not None
        clock.now += 0.001
        assert await cache.get("a") is None and "a" not in cache
        assert (cache.stats.expirations, cache.stats.bytes_held, cache.stats.entries) == (1, 0, 0)
    run(scenario())


def test_redis_down_is_a_miss_not_an_error(caplog):
    async def scenario():
        clock = FakeClock()
        store = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, timeout_s=0.2, retry_after_s=5, clock=clock)
        cache = GatewayCache(CacheConfig(enabled=True), store)
        plan = cache.plan("g", CHAT, BODY, {})
        started = time.monotonic()
        assert await cache.lookup(plan) is None
        assert await cache.store_response(plan, ANSWER)  # handed to the store, which drops it (Redis is down)
        assert await cache.lookup(plan) is None
        assert time.monotonic() - started < 1
        assert (store.stats.errors, store.stats.misses, store.stats.stores) == (1, 2, 0)  # then left alone 5 s
        clock.now += 5
        assert await cache.lookup(plan) is None and store.stats.errors == 2
        await cache.close()
    run(scenario())
    assert "Redis GET failed" in caplog.text


def test_a_redis_that_dies_and_returns(tmp_path):
    """Killed under a live client: misses (counted), no exception; back on the same port: used again once the
    client's pause after the error has passed."""
    port = free_port()
    server = start_redis(port, tmp_path)
    try:
        async def scenario():
            nonlocal server
            clock = FakeClock()
            store = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, retry_after_s=1, clock=clock)
            cache = GatewayCache(CacheConfig(enabled=True), store)
            plan = cache.plan("g", CHAT, BODY, {})
            await cache.store_response(plan, ANSWER)
            assert await cache.lookup(plan) is not None
            stop_redis(server)
            assert await cache.lookup(plan) is None and store.stats.errors == 1
            server = start_redis(port, tmp_path)  # empty: no persistence
            assert await cache.lookup(plan) is None and store.stats.errors == 1  # still pausing: Redis not asked
            clock.now += 1
            await cache.store_response(plan, ANSWER)
            assert await cache.lookup(plan) is not None and store.stats.errors == 1
            await cache.close()
        run(scenario())
    finally:
        stop_redis(server)


def test_redis_keys_carry_the_namespace_and_a_ttl(redis_url):
    import redis.asyncio as redis

    async def scenario():
        cache = GatewayCache(CacheConfig(enabled=True, backend="redis", redis_url=redis_url, namespace="fleet-a",
                                         ttl_s=30))
        plan = cache.plan("g", CHAT, BODY, {})
        await cache.store_response(plan, ANSWER)
        client = redis.Redis.from_url(redis_url)
        assert await client.keys("fleet-a:*") == [f"fleet-a:{plan.key}".encode()]
        assert 0 < await client.pttl(f"fleet-a:{plan.key}") <= 30_000
        await client.set(f"fleet-a:{plan.key}", b"garbage")  # a corrupt entry is a miss, counted
        assert await cache.lookup(plan) is None and cache.stats.errors == 1
        await client.aclose()
        await cache.close()
    run(scenario())


def test_get_latency_of_a_2kb_answer(backend):
    """Not a timed assertion: prints the median get() latency (docs/gateway-cache.md quotes it)."""
    async def scenario():
        cache = backend.make()
        plan = cache.plan("g", CHAT, BODY, {})
        body = json.loads(ANSWER)
        body["choices"][0]["message"]["content"] = "x" * (2048 - len(ANSWER) + len("Hello! How can I help?"))
        answer = json.dumps(body).encode()
        assert len(answer) == 2048 and await cache.store_response(plan, answer)
        gets, hits = [], []
        for _ in range(200):
            started = time.perf_counter()
            got = await cache.lookup(plan)
            gets.append(time.perf_counter() - started)
            assert got is not None and got.body == answer
            started = time.perf_counter()  # the whole hit path: key, lookup, the body to send
            content, _ = cache.render(plan, await cache.lookup(cache.plan("g", CHAT, BODY, {})))
            hits.append(time.perf_counter() - started)
            assert content == answer
        print(f"\n{backend.name}: get() of a {len(answer)} B answer, median {statistics.median(gets) * 1e6:.1f} us "
              f"(p99 {sorted(gets)[197] * 1e6:.1f} us); plan+lookup+render median {statistics.median(hits) * 1e6:.1f} us"
              f" (p99 {sorted(hits)[197] * 1e6:.1f} us); 200 calls")
        await cache.close()
    run(scenario())
