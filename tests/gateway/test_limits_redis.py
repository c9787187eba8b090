"""TenantLimiter over a real redis-server (conftest's ``redis_url``): two limiters sharing it enforce one limit
together, as two gateways would; budgets outlive a limiter; a dead gateway's slot and a dead Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import redis
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from corral.gateway.errors import GatewayError
from corral.gateway.limits import LimitsConfig, TenantLimiter, TenantWindow, retry_after
from corral.gateway.supervisor import free_port
from corral.gateway.tenants import TenantLimits
from tests.gateway.test_limits import refusal, run


@pytest.fixture
def fresh_redis(redis_url) -> str:
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def redis_limiter(url: str, **config) -> TenantLimiter:
    return TenantLimiter(LimitsConfig(storage=url, **config))


def test_redis_burst_over_requests_per_minute_retry_after_matches_the_window(fresh_redis):
    limits_ = TenantLimits(requests_per_minute=3)

    async def scenario():
        limiter = redis_limiter(fresh_redis)
        before = time.time()
        for _ in range(3):
            await limiter.admit("acme", limits_)
        error = await refusal(limiter, "acme", limits_)
        after = time.time()
        assert (error.limit, error.code) == ("requests_per_minute", "rate_limit_exceeded")
        # Independently: the window's reset as limits reads it from Redis.
        window = MovingWindowRateLimiter(RedisStorage("async+" + fresh_redis, implementation="redispy"))
        stats = await window.get_window_stats(TenantWindow(3, namespace="corral"), "requests",
                                              "moving_window", "acme")
        # Redis's Lua answers the window's start with 14 significant digits: 100 us, in 2026
        assert stats.remaining == 0 and before + 60 - 1e-3 <= stats.reset_time <= after + 60 + 1e-3
        assert retry_after(stats.reset_time, time.time()) <= error.retry_after_s
        assert error.retry_after_s <= retry_after(stats.reset_time, after) + 1
        assert 60 - (after - before) <= error.retry_after_s <= 61
        await limiter.close()
        await window.storage.bridge.storage.aclose()
    run(scenario())


def test_two_gateways_sharing_one_redis_enforce_one_limit_together(fresh_redis):
    limits_ = TenantLimits(requests_per_minute=4, max_concurrent=3, tokens_per_minute=300)

    async def scenario():
        a, b = redis_limiter(fresh_redis), redis_limiter(fresh_redis)
        held = [await a.admit("acme", limits_), await b.admit("acme", limits_), await a.admit("acme", limits_)]
        assert (await refusal(b, "acme", limits_)).limit == "max_concurrent"
        await held[0].finish(100, 100)
        await held[1].finish(50, 50)  # 300 tokens charged, on two gateways
        assert (await refusal(a, "acme", limits_)).limit == "tokens_per_minute"
        assert (await refusal(b, "acme", limits_)).limit == "tokens_per_minute"
        await held[2].finish()
        await b.admit("globex", limits_)
        await a.close()
        await b.close()

    async def requests_shared():
        a, b = redis_limiter(fresh_redis), redis_limiter(fresh_redis)
        per_minute = TenantLimits(requests_per_minute=5)
        results = await asyncio.gather(*(g.admit("initech", per_minute) for g in (a, b) * 6),
                                       return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 5
        assert all(r.limit == "requests_per_minute" for r in results if isinstance(r, BaseException))
        await a.close()
        await b.close()
    run(scenario())
    run(requests_shared())


def test_redis_budgets_survive_a_restart_and_are_shared(fresh_redis):
    limits_ = TenantLimits(tokens_per_day=100, tokens_per_month=1000)

    async def scenario():
        a = redis_limiter(fresh_redis)
        await (await a.admit("acme", limits_)).finish(70, 0)
        await a.close()  # a gateway restarts ...
        a, b = redis_limiter(fresh_redis), redis_limiter(fresh_redis)
        await (await b.admit("acme", limits_)).finish(30, 0)  # ... another one charges too
        error = await refusal(a, "acme", limits_)
        assert (error.code, error.limit) == ("insufficient_quota", "tokens_per_day")
        midnight = datetime.fromtimestamp(time.time(), UTC).replace(hour=0, minute=0, second=0,
                                                                             microsecond=0).timestamp() + 86400
        assert abs(error.retry_after_s - (midnight - time.time())) <= 2
        await a.close()
        await b.close()
    run(scenario())


def test_a_changed_strategy_starts_new_windows_in_redis(fresh_redis):
    limits_ = TenantLimits(requests_per_minute=2, tokens_per_minute=100)

    async def scenario():
        for requests, tokens in [("moving_window", "sliding_window_counter"), ("fixed_window", "moving_window"),
                                 ("sliding_window_counter", "fixed_window")]:
            limiter = redis_limiter(fresh_redis, requests_strategy=requests, tokens_strategy=tokens)
            await (await limiter.admit("acme", limits_, estimated_tokens=10)).finish(20, 20)
            await limiter.admit("acme", limits_)
            assert (await refusal(limiter, "acme", limits_)).limit == "requests_per_minute"
            assert limiter.errors == 0
            await limiter.close()
    run(scenario())


def test_a_slot_a_dead_gateway_held_frees_after_its_lease(fresh_redis):
    limits_ = TenantLimits(max_concurrent=2)

    async def scenario():
        dead = redis_limiter(fresh_redis, concurrency_lease_s=1.0)
        await dead.admit("acme", limits_)  # never finished: the gateway died
        await dead.close()
        alive = redis_limiter(fresh_redis, concurrency_lease_s=1.0)
        await asyncio.sleep(0.6)
        mine = await alive.admit("acme", limits_)  # keeps the tenant's key alive past the dead slot's lease
        assert (await refusal(alive, "acme", limits_)).limit == "max_concurrent"
        await asyncio.sleep(0.7)  # the dead slot's lease is over, this one's is not
        second = await alive.admit("acme", limits_)
        assert (await refusal(alive, "acme", limits_)).limit == "max_concurrent"  # the dead slot came back once
        await asyncio.gather(mine.finish(), second.finish())
        await alive.close()
    run(scenario())


def test_a_dead_redis_admits_when_fail_open_and_answers_503_otherwise():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    limits_ = TenantLimits(requests_per_minute=1, max_concurrent=1, tokens_per_day=10)

    async def scenario():
        open_ = redis_limiter(url, store_retry_s=60)
        for _ in range(3):
            await (await open_.admit("acme", limits_)).finish(100, 100)
        assert open_.errors == 1  # the first failure; then the store is left alone for store_retry_s
        await open_.close()
        closed = redis_limiter(url, fail_open=False, store_retry_s=0)
        for _ in range(2):
            with pytest.raises(GatewayError) as caught:
                await closed.admit("acme", limits_)
            assert (caught.value.status, caught.value.code) == (503, "limits_unavailable")
        assert closed.errors == 2
        await closed.close()
    run(scenario())
