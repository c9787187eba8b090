"""TenantLimiter in one process: the ``limits`` memory storage under a clock the test moves, and budgets in a SQLite
file (test_limits_redis.py: the same over a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime

import limits.aio.storage.memory
import limits.aio.strategies
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.gateway.budgets import current_period
from corral.gateway.errors import error_response
from corral.gateway.limits import LimitExceeded, LimitsConfig, TenantLimiter, retry_after
from corral.gateway.tenants import TenantLimits

# 2026-12-06T12:00:00.25Z: mid-day and mid-month, with a fraction so Retry-After rounding is exercised.
NOON = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp() + 0.25


class Clock:
    """Seconds since the epoch that only move when the test says; stands in for ``time`` in the modules of
    ``limits`` that read it (``time.time()``), and is the limiter's own clock."""

    def __init__(self, now: float = NOON):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def patch_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    for module in (limits.aio.storage.memory, limits.aio.strategies):
        monkeypatch.setattr(module, "time", clock)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    patch_clock(monkeypatch, clock)
    return clock


@pytest.fixture
def memory_limiter(clock, tmp_path):
    def make(**config) -> TenantLimiter:
        return TenantLimiter(LimitsConfig(budget_path=str(tmp_path / "budgets.sqlite"), **config), clock=clock)
    return make


def run(coro):
    return asyncio.run(coro)


async def refusal(limiter: TenantLimiter, tenant: str, limits: TenantLimits, estimated: int = 0) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit(tenant, limits, estimated)
    return caught.value


def test_config_validates_the_storage_scheme_and_forbids_unknown_fields():
    assert LimitsConfig(storage="redis://10.0.0.1:6379/2").uses_redis
    assert not LimitsConfig().uses_redis
    with pytest.raises(ValidationError, match="memory:// or a redis:// or rediss:// URL, got scheme 'memcached'"):
        LimitsConfig(storage="memcached://x")
    with pytest.raises(ValidationError, match="must be memory://"):
        LimitsConfig(storage="127.0.0.1:6379")
    with pytest.raises(ValidationError):
        LimitsConfig(strategy="moving_window")


def test_retry_after_is_whole_seconds_strictly_past_the_reset():
    assert retry_after(100.25, 40.0) == 61  # 60.25 s -> 61
    assert retry_after(100.0, 40.0) == 61  # exactly 60 s: limits still counts an entry one window old
    assert retry_after(40.5, 40.0) == 1
    assert retry_after(30.0, 40.0) == 1  # a reset already past: at least 1


def test_unlimited_fields_never_refuse(memory_limiter):
    limiter = memory_limiter()

    async def scenario():
        for _ in range(500):
            admission = await limiter.admit("acme", TenantLimits(), estimated_tokens=10_000)
            await admission.finish(10_000, 10_000)
        held = [await limiter.admit("acme", TenantLimits(requests_per_minute=None)) for _ in range(100)]
        assert all(not a.finished for a in held)
    run(scenario())


def test_burst_over_requests_per_minute_gets_429_with_an_exact_retry_after(memory_limiter, clock):
    limiter = memory_limiter()
    limits_ = TenantLimits(requests_per_minute=5)

    async def scenario():
        first = clock.now
        for _ in range(5):
            await limiter.admit("acme", limits_)
            clock.advance(2)
        clock.advance(20.5)  # 30.5 s after the first request
        error = await refusal(limiter, "acme", limits_)
        assert (error.status, error.code, error.limit) == (429, "rate_limit_exceeded", "requests_per_minute")
        assert error.message == "tenant 'acme' is over its limit of 5 requests per minute (requests_per_minute)"
        # The first request leaves the window at first + 60: strictly past that, in whole seconds.
        assert error.retry_after_s == math.floor(first + 60 - clock.now) + 1 == 30
        assert error.headers == {"Retry-After": "30"}
        clock.advance(error.retry_after_s - 1)
        await refusal(limiter, "acme", limits_)  # one second early: still full
        clock.advance(1)
        await limiter.admit("acme", limits_)
        await refusal(limiter, "acme", limits_)  # the second request (first + 2) is still in the window
    run(scenario())


def test_the_429_is_openai_shaped_with_the_retry_after_header(memory_limiter):
    limiter = memory_limiter()

    async def scenario():
        await limiter.admit("acme", TenantLimits(requests_per_minute=1))
        return await refusal(limiter, "acme", TenantLimits(requests_per_minute=1))
    response = error_response(run(scenario()), headers={"x-request-id": "r1"})
    assert response.status_code == 429
    # the clock stood still: the window frees exactly 60 s later, so strictly past it is 61
    assert response.headers["retry-after"] == "61" and response.headers["x-request-id"] == "r1"
    assert json.loads(response.body) == {"error": {
        "message": "tenant 'acme' is over its limit of 1 requests per minute (requests_per_minute)",
        "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}


@pytest.mark.parametrize("strategy", ["moving_window", "sliding_window_counter", "fixed_window"])
def test_tokens_per_minute_refuses_after_finish_charged_actual_usage(memory_limiter, clock, strategy):
    limiter = memory_limiter(tokens_strategy=strategy)
    limits_ = TenantLimits(tokens_per_minute=100)

    async def scenario():
        admission = await limiter.admit("acme", limits_)  # no estimate: nothing reserved
        assert admission.reserved_tokens == 0
        await limiter.admit("acme", limits_)  # the window is still empty
        clock.advance(5)
        await admission.finish(prompt_tokens=60, completion_tokens=50)  # past the limit: the window fills
        clock.advance(0.5)
        error = await refusal(limiter, "acme", limits_)
        assert (error.code, error.limit) == ("rate_limit_exceeded", "tokens_per_minute")
        assert error.message == "tenant 'acme' is over its limit of 100 tokens per minute (tokens_per_minute)"
        assert 1 <= error.retry_after_s <= 61
        if strategy == "moving_window":  # exact: the tokens charged at finish leave 60 s later, 59.5 s from now
            assert error.retry_after_s == 60
        clock.advance(error.retry_after_s)
        await limiter.admit("acme", limits_)
    run(scenario())


def test_tokens_per_minute_counts_prompt_and_completion(memory_limiter):
    limiter = memory_limiter()
    limits_ = TenantLimits(tokens_per_minute=100)

    async def scenario():
        await (await limiter.admit("acme", limits_)).finish(prompt_tokens=49, completion_tokens=50)
        await limiter.admit("acme", limits_)  # 99: one token left
        await (await limiter.admit("acme", limits_)).finish(prompt_tokens=1)
        await refusal(limiter, "acme", limits_)
    run(scenario())


@pytest.mark.parametrize("strategy", ["moving_window", "sliding_window_counter", "fixed_window"])
def test_usage_past_what_is_left_fills_the_window(memory_limiter, strategy):
    limiter = memory_limiter(tokens_strategy=strategy)
    limits_ = TenantLimits(tokens_per_minute=100)

    async def scenario():
        first, second = await limiter.admit("acme", limits_), await limiter.admit("acme", limits_)
        await first.finish(50, 0)
        await second.finish(40, 40)  # 80 does not fit in the 50 left: the window is filled, not left at 50
        assert (await refusal(limiter, "acme", limits_)).limit == "tokens_per_minute"
    run(scenario())


def test_a_concurrent_burst_is_admitted_only_until_its_estimates_fill_the_window(memory_limiter):
    limiter = memory_limiter(tokens_strategy="moving_window")
    limits_ = TenantLimits(tokens_per_minute=100)

    async def scenario():
        results = await asyncio.gather(*(limiter.admit("acme", limits_, estimated_tokens=30) for _ in range(10)),
                                       return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        assert [a.reserved_tokens for a in admitted] == [30, 30, 30, 10]  # clamped to what was left
        assert all(isinstance(r, LimitExceeded) and r.limit == "tokens_per_minute" for r in results[4:])
        # finish charges only what went past the reservation; a request that used less is charged its estimate
        await admitted[0].finish(20, 20)
        await admitted[1].finish(5, 0)
    run(scenario())


def test_concurrency_429_while_in_flight_and_admitted_after_finish(memory_limiter):
    limiter = memory_limiter()
    limits_ = TenantLimits(max_concurrent=2)

    async def scenario():
        first, second = await limiter.admit("acme", limits_), await limiter.admit("acme", limits_)
        error = await refusal(limiter, "acme", limits_)
        assert (error.limit, error.code, error.retry_after_s) == ("max_concurrent", "rate_limit_exceeded", 1)
        assert error.message == "tenant 'acme' already has 2 requests in flight, its limit (max_concurrent)"
        await first.finish()
        await first.finish()  # idempotent: the slot is given back once
        third = await limiter.admit("acme", limits_)
        await refusal(limiter, "acme", limits_)
        await asyncio.gather(second.finish(1, 1), second.finish(1, 1), third.finish())
        await limiter.admit("acme", limits_)
        await limiter.admit("acme", limits_)
        await refusal(limiter, "acme", limits_)
    run(scenario())


def test_finish_twice_charges_once(memory_limiter):
    limiter = memory_limiter()
    limits_ = TenantLimits(tokens_per_day=100, tokens_per_minute=100)

    async def scenario():
        admission = await limiter.admit("acme", limits_, estimated_tokens=10)
        await asyncio.gather(admission.finish(30, 30), admission.finish(30, 30))
        await admission.finish(30, 30)
        assert admission.finished
        assert await limiter.budgets.used("acme", [current_period("day", NOON)]) == [60]
        await limiter.admit("acme", limits_)
    run(scenario())


def test_a_refusal_by_another_limit_gives_the_slot_back(memory_limiter):
    limiter = memory_limiter()
    limits_ = TenantLimits(max_concurrent=1, requests_per_minute=1)

    async def scenario():
        await (await limiter.admit("acme", limits_)).finish()
        assert (await refusal(limiter, "acme", limits_)).limit == "requests_per_minute"
        assert (await refusal(limiter, "acme", limits_)).limit == "requests_per_minute"  # not max_concurrent
    run(scenario())


def test_budget_exhausted_is_insufficient_quota_until_the_end_of_the_utc_day(memory_limiter, clock):
    clock.now = datetime(2026, 12, 6, 23, 59, tzinfo=UTC).timestamp() + 0.5
    limiter = memory_limiter()
    limits_ = TenantLimits(tokens_per_day=100)

    async def scenario():
        await (await limiter.admit("acme", limits_)).finish(60, 39)
        await (await limiter.admit("acme", limits_)).finish(1, 1)  # 99 used: admitted, and it overshoots
        error = await refusal(limiter, "acme", limits_)
        assert (error.status, error.code, error.limit) == (429, "insufficient_quota", "tokens_per_day")
        assert error.message == ("tenant 'acme' has used its budget of 100 tokens per day (tokens_per_day); "
                                 "it renews at 2026-12-07T00:00:00Z")
        assert error.retry_after_s == 60  # 59.5 s to midnight UTC
        clock.advance(60)
        await limiter.admit("acme", limits_)
        assert await limiter.budgets.used("acme", []) == []
    run(scenario())


def test_an_exhausted_month_is_retried_at_its_end_even_when_the_day_ends_first(memory_limiter, clock):
    clock.now = datetime(2026, 12, 30, 23, 0, tzinfo=UTC).timestamp()
    limiter = memory_limiter()
    limits_ = TenantLimits(tokens_per_day=50, tokens_per_month=50)

    async def scenario():
        await (await limiter.admit("acme", limits_)).finish(50, 0)
        error = await refusal(limiter, "acme", limits_)
        assert (error.code, error.limit, error.retry_after_s) == ("insufficient_quota", "tokens_per_month", 90001)
        assert "renews at 2027-01-01T00:00:00Z" in error.message
    run(scenario())


def test_budgets_survive_a_restart_over_the_same_sqlite_file(clock, tmp_path):
    config = LimitsConfig(budget_path=str(tmp_path / "budgets.sqlite"))
    limits_ = TenantLimits(tokens_per_day=1000, tokens_per_month=5000)

    async def first_life():
        limiter = TenantLimiter(config, clock=clock)
        await (await limiter.admit("acme", limits_)).finish(600, 400)
        await limiter.close()

    async def second_life():
        limiter = TenantLimiter(config, clock=clock)
        assert (await refusal(limiter, "acme", limits_)).limit == "tokens_per_day"
        await limiter.admit("other", limits_)
        await limiter.close()
    run(first_life())
    run(second_life())


def test_finish_without_usage_charges_nothing_and_releases_the_slot(memory_limiter):
    limiter = memory_limiter()
    limits_ = TenantLimits(max_concurrent=1, tokens_per_day=10, tokens_per_minute=10)

    async def scenario():
        for _ in range(20):  # the request failed before any usage was known
            await (await limiter.admit("acme", limits_)).finish()
        await (await limiter.admit("acme", limits_)).finish(5, 5)
        assert (await refusal(limiter, "acme", limits_)).limit == "tokens_per_day"
    run(scenario())


def test_tenants_are_independent_and_rejections_reach_the_hook(clock, tmp_path):
    rejections: list[tuple[str, str]] = []
    limiter = TenantLimiter(LimitsConfig(budget_path=str(tmp_path / "b.sqlite")), clock=clock,
                            on_reject=lambda tenant, limit: rejections.append((tenant, limit)))
    limits_ = TenantLimits(requests_per_minute=2, max_concurrent=5, tokens_per_minute=1000, tokens_per_day=1000)

    async def scenario():
        for _ in range(2):
            await (await limiter.admit("acme", limits_)).finish(500, 0)
        await refusal(limiter, "acme", limits_)
        for _ in range(2):
            await (await limiter.admit("globex", limits_)).finish(400, 0)
        await refusal(limiter, "globex", limits_)
    run(scenario())
    assert rejections == [("acme", "tokens_per_day"), ("globex", "requests_per_minute")]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 61), st.integers(1, 6)), min_size=1, max_size=25),
       limit=st.integers(1, 5))
def test_never_more_than_the_limit_in_any_window_and_refused_only_when_full(steps, limit):
    clock = Clock()
    admitted: list[float] = []

    async def scenario(limiter: TenantLimiter):
        limits_ = TenantLimits(requests_per_minute=limit)
        for advance, burst in steps:
            # 0.0137 s more per step: no two requests are ever exactly 60 s apart, where limits' acquire (an
            # entry exactly one window old counts) and window stats (it does not) disagree.
            clock.advance(advance + 0.0137)
            results = await asyncio.gather(*(limiter.admit("acme", limits_) for _ in range(burst)),
                                           return_exceptions=True)
            now = clock.now
            in_window = [t for t in admitted if t > now - 60]
            for result in results:
                if isinstance(result, LimitExceeded):
                    assert len(in_window) + sum(1 for r in results if not isinstance(r, BaseException)) == limit
                    oldest = min(in_window) if in_window else now
                    assert result.retry_after_s == math.floor(oldest + 60 - now) + 1
                else:
                    assert not isinstance(result, BaseException), result
                    admitted.append(now)
            assert len([t for t in admitted if t > now - 60]) <= limit

    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_clock(monkeypatch, clock)
        run(scenario(TenantLimiter(LimitsConfig(budget_path=":memory:"), clock=clock)))
