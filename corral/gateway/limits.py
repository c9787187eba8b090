"""Per-tenant rate limits and token budgets (issue 25): requests per minute, tokens per minute (prompt +
completion, as the backend's ``usage`` reports them), requests in flight, and tokens per UTC day and month.

``TenantLimiter.admit`` runs before a request is forwarded and answers an ``Admission`` or raises
``LimitExceeded`` (a 429 with ``Retry-After``); ``Admission.finish`` runs once the answer is over (or failed)
and charges the tokens it used. The windows are the ``limits`` library's: in this process (``memory://``) or in
Redis (``redis://``), where a fleet of gateways shares them, the requests in flight and the budgets too.

Tokens per minute: the gateway has no tokenizer, so a request's tokens are known only when it ends. Admission
needs at least one token left in the window and reserves the caller's estimate (clamped to what is left);
``finish`` charges the actual total beyond that reservation. Reservations are atomic in the store, so a burst
is admitted only until its estimates fill the window: the tokens a window counts exceed its limit by at most the
sum, over the requests in flight, of their actual total minus their reservation. A reservation is never refunded
(the ``limits`` windows cannot take back a hit): a request that used less, or failed, is charged its estimate.
Budgets are checked the same way (admitted while the period's usage is under the budget; the requests in flight
then may pass it by their own tokens) and charged at ``finish``, only for the periods the tenant has a budget for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from corral.gateway.budgets import BudgetStore, Period, RedisBudgets, SqliteBudgets, current_period
from corral.gateway.concurrency import InFlight, MemoryInFlight, RedisInFlight
from corral.gateway.errors import GatewayError
from corral.gateway.limits_config import LimitsConfig
from corral.gateway.tenants import TenantLimits

__all__ = ["Admission", "LimitExceeded", "LimitsConfig", "TenantLimiter", "TenantWindow", "retry_after"]

log = logging.getLogger(__name__)

_STRATEGIES: dict[str, type[RateLimiter]] = {"moving_window": MovingWindowRateLimiter,
                                             "sliding_window_counter": SlidingWindowCounterRateLimiter,
                                             "fixed_window": FixedWindowRateLimiter}
_RESERVE_TRIES = 3  # a reservation that lost a race to another is retried on the window's new state


class LimitExceeded(GatewayError):
    """A 429 naming the limit: ``code`` is ``rate_limit_exceeded`` (a rate or concurrency limit) or
    ``insufficient_quota`` (a budget; its ``type`` too, as OpenAI answers an exhausted quota); ``Retry-After``
    (whole seconds, at least 1) is in ``headers``."""

    def __init__(self, limit: str, message: str, retry_after_s: int, code: str = "rate_limit_exceeded"):
        super().__init__(429, message, code=code, headers={"Retry-After": str(retry_after_s)},
                         error_type="insufficient_quota" if code == "insufficient_quota" else None)
        self.limit = limit
        self.retry_after_s = retry_after_s


def retry_after(reset_s: float, now_s: float) -> int:
    """Whole seconds to wait for a window that frees up at ``reset_s``: strictly past it (``limits`` still counts
    an entry exactly one window old), at least 1 (RFC 9110 delta-seconds)."""
    return max(1, math.floor(reset_s - now_s) + 1)


class Admission:
    """A request let through. ``finish`` charges its tokens and gives back its place in flight; call it exactly
    once when the answer is over, from a ``finally`` (further calls do nothing); it never raises."""

    def __init__(self, limiter: TenantLimiter, tenant: str, limits: TenantLimits):
        self.tenant = tenant
        self.limits = limits
        self.reserved_tokens = 0  # charged to tokens per minute at admission
        self._limiter = limiter
        self._slot: str | None = None
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    async def finish(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Charges ``prompt_tokens + completion_tokens`` (what the backend's ``usage`` said; 0 when unknown) and
        releases the request's place in flight."""
        if self._finished:
            return
        self._finished = True  # before any await: a second call while this one runs must do nothing
        await self._limiter._finish(self, max(0, prompt_tokens) + max(0, completion_tokens))


class TenantLimiter:
    """Enforces each tenant's ``TenantLimits``: one per gateway process; gateways configured with the same Redis
    enforce one limit together. ``on_reject(tenant, limit)`` is called on each refusal (a metrics hook);
    ``clock`` gives seconds since the epoch (the ``limits`` windows use ``time.time`` too)."""

    def __init__(self, config: LimitsConfig, on_reject: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.on_reject = on_reject
        self.clock = clock
        self.errors = 0  # store failures, each answered by fail_open
        self._down_until = float("-inf")  # time.monotonic(): the store is left alone until then
        self._redis = None
        storage: Storage
        if config.uses_redis:
            import redis.asyncio as redis  # the gateway's dependency, needed only with a Redis store
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One pool for the windows (limits' redis-py bridge), the requests in flight and the budgets. No
            # retries: a failure is answered by fail_open at once, not after a request's worth of backoff.
            self._redis = redis.Redis.from_url(config.storage, socket_timeout=config.timeout_s,
                                               socket_connect_timeout=config.timeout_s, retry=Retry(NoBackoff(), 0))
            storage = RedisStorage("async+" + config.storage, implementation="redispy",
                                   connection_pool=self._redis.connection_pool)
            self._in_flight: InFlight = RedisInFlight(self._redis, f"{config.namespace}:in_flight",
                                                        config.concurrency_lease_s)
            self.budgets: BudgetStore = RedisBudgets(self._redis, f"{config.namespace}:budget")
        else:
            storage = MemoryStorage()
            self._in_flight = MemoryInFlight()
            self.budgets = SqliteBudgets(config.budget_path)
        self._requests = _STRATEGIES[config.requests_strategy](storage)
        self._tokens = _STRATEGIES[config.tokens_strategy](storage)
        # The strategy is part of a window's key: each keeps another Redis type under it (a list, a counter), so
        # a changed strategy starts new windows rather than failing on the old ones.
        self._requests_key = ("requests", config.requests_strategy)
        self._tokens_key = ("tokens", config.tokens_strategy)

    async def admit(self, tenant: str, limits: TenantLimits, estimated_tokens: int = 0) -> Admission:
        """Lets a request of ``tenant`` through, or raises ``LimitExceeded``. ``estimated_tokens``: what the
        request is expected to cost, reserved against tokens per minute (a low estimate, such as the prompt's
        characters / 4, is charged fairly; the rest is charged at ``finish``)."""
        admission = Admission(self, tenant, limits)
        if not self._store_up():
            return self._unchecked(admission)
        try:
            # Read-only checks first, so that a refusal takes no slot and no request from the windows.
            has_budget = limits.tokens_per_day is not None or limits.tokens_per_month is not None
            reads = [self._check_budgets(tenant, limits)] if has_budget else []
            if limits.tokens_per_minute is not None:
                reads.append(self._check_tokens(tenant, limits))
            results = await self._together(*reads)
            tokens_left = results[-1] if limits.tokens_per_minute is not None else None
            if limits.max_concurrent is not None:
                admission._slot = await self._in_flight.acquire(tenant, limits.max_concurrent)
                if admission._slot is None:
                    raise LimitExceeded("max_concurrent", f"tenant {tenant!r} already has {limits.max_concurrent} "
                                        "requests in flight, its limit (max_concurrent)", retry_after_s=1)
            await self._hit_requests(tenant, limits)
            if tokens_left is not None and estimated_tokens > 0:
                admission.reserved_tokens = await self._reserve_tokens(tenant, limits, estimated_tokens, tokens_left)
        except LimitExceeded as error:
            await self._release(admission)
            if self.on_reject is not None:
                self.on_reject(tenant, error.limit)
            raise
        except Exception as error:  # noqa: BLE001 - the store failed: fail_open decides
            self._failed("admission", error)
            await self._release(admission)
            return self._unchecked(admission)
        return admission

    async def _together(self, *steps: Coroutine[Any, Any, Any]) -> list[Any]:
        """Runs independent steps and raises the first one's error in the order given: at once with Redis (their
        round trips overlap), one by one in memory or when alone (nothing to overlap, no task to pay for)."""
        if not self.config.uses_redis or len(steps) < 2:
            results: list[Any] = []
            try:
                for step in steps:
                    results.append(await step)
            finally:
                for step in steps[len(results) + 1:]:
                    step.close()  # never started: a step before it raised
            return results
        results = await asyncio.gather(*steps, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _store_up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _unchecked(self, admission: Admission) -> Admission:
        """The answer while the store is down: the request admitted unchecked, or a 503."""
        if not self.config.fail_open:
            raise GatewayError(503, "the rate limit store is unavailable", code="limits_unavailable")
        admission._finished = True  # nothing to charge: the store is down
        return admission

    async def _check_budgets(self, tenant: str, limits: TenantLimits) -> None:
        budgets = _budgets(limits, self.clock())
        if not budgets:
            return
        used = await self.budgets.used(tenant, [period for period, _ in budgets])
        over = [(period, budget) for (period, budget), spent in zip(budgets, used) if spent >= budget]
        if over:
            period, budget = max(over, key=lambda item: item[0].end_s)  # the last to renew
            raise LimitExceeded(f"tokens_per_{period.name}",
                                f"tenant {tenant!r} has used its budget of {budget} tokens per {period.name} "
                                f"(tokens_per_{period.name}); it renews at {period.end_iso}",
                                retry_after(period.end_s, self.clock()), code="insufficient_quota")

    async def _check_tokens(self, tenant: str, limits: TenantLimits) -> int | None:
        """The tokens left in the tenant's window (None: unlimited); refuses when none are."""
        if limits.tokens_per_minute is None:
            return None
        item = self._item(limits.tokens_per_minute)
        stats = await self._tokens.get_window_stats(item, *self._tokens_key, tenant)
        if stats.remaining < 1:
            raise self._tokens_exceeded(tenant, limits, stats.reset_time)
        return stats.remaining

    async def _hit_requests(self, tenant: str, limits: TenantLimits) -> None:
        if limits.requests_per_minute is None:
            return
        item = self._item(limits.requests_per_minute)
        if not await self._requests.hit(item, *self._requests_key, tenant):
            stats = await self._requests.get_window_stats(item, *self._requests_key, tenant)
            raise LimitExceeded("requests_per_minute",
                                f"tenant {tenant!r} is over its limit of {limits.requests_per_minute} requests "
                                "per minute (requests_per_minute)", retry_after(stats.reset_time, self.clock()))

    async def _reserve_tokens(self, tenant: str, limits: TenantLimits, estimated: int, left: int) -> int:
        item = self._item(limits.tokens_per_minute)
        for _ in range(_RESERVE_TRIES):
            reserve = min(estimated, left)
            if await self._tokens.hit(item, *self._tokens_key, tenant, cost=reserve):
                return reserve
            stats = await self._tokens.get_window_stats(item, *self._tokens_key, tenant)
            left = stats.remaining
            if left < 1:
                raise self._tokens_exceeded(tenant, limits, stats.reset_time)
        raise self._tokens_exceeded(tenant, limits, self.clock())

    def _tokens_exceeded(self, tenant: str, limits: TenantLimits, reset_s: float) -> LimitExceeded:
        return LimitExceeded("tokens_per_minute", f"tenant {tenant!r} is over its limit of "
                             f"{limits.tokens_per_minute} tokens per minute (tokens_per_minute)",
                             retry_after(reset_s, self.clock()))

    def _item(self, amount: int | None) -> RateLimitItemPerMinute:
        assert amount is not None
        return TenantWindow(amount, namespace=self.config.namespace)

    async def _finish(self, admission: Admission, tokens: int) -> None:
        limits, tenant = admission.limits, admission.tenant
        steps = [self._release(admission)]
        if self._store_up():
            extra = tokens - admission.reserved_tokens
            if limits.tokens_per_minute is not None and extra > 0:
                steps.append(self._charge_tokens(tenant, limits.tokens_per_minute, extra))
            budgets = _budgets(limits, self.clock())
            if budgets and tokens > 0:
                steps.append(self.budgets.charge(tenant, [period for period, _ in budgets], tokens))
        try:
            await self._together(*steps)
        except Exception as error:  # noqa: BLE001 - finish never fails a request that has been answered
            self._failed("charge", error)

    async def _charge_tokens(self, tenant: str, limit: int, tokens: int) -> None:
        """Charges tokens already spent, past the limit too: a window refuses a hit that does not fit (and records
        nothing), so the window is then filled to its limit; it cannot hold more."""
        item = self._item(limit)
        if await self._tokens.hit(item, *self._tokens_key, tenant, cost=min(tokens, limit)):
            return
        left = (await self._tokens.get_window_stats(item, *self._tokens_key, tenant)).remaining
        if left > 0:  # a fixed window counts even a refused hit, and has none left then
            await self._tokens.hit(item, *self._tokens_key, tenant, cost=min(tokens, left))

    async def _release(self, admission: Admission) -> None:
        slot, admission._slot = admission._slot, None
        if slot is None:
            return
        try:
            await self._in_flight.release(admission.tenant, slot)
        except Exception as error:  # noqa: BLE001 - with Redis the lease frees the slot later
            self._failed("release", error)

    def _failed(self, what: str, error: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self.config.store_retry_s
        log.warning("limits: the store failed in %s (%s: %s); %s for %.1f s", what, type(error).__name__, error,
                    "admitting requests unchecked" if self.config.fail_open else "answering 503",
                    self.config.store_retry_s)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        else:
            await self.budgets.close()


class TenantWindow(RateLimitItemPerMinute):
    """A one-minute window whose key leaves out its limit (``limits`` puts the amount in the key): a tenant has one
    window whatever its limit, so a limit changed by a config reload counts the requests and tokens of the last
    minute, and a lowered one is not escaped by starting a fresh window."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join([self.namespace, *(str(part) for part in identifiers), "per_minute"])


def _budgets(limits: TenantLimits, now_s: float) -> list[tuple[Period, int]]:
    budgets = []
    if limits.tokens_per_day is not None:
        budgets.append((current_period("day", now_s), limits.tokens_per_day))
    if limits.tokens_per_month is not None:
        budgets.append((current_period("month", now_s), limits.tokens_per_month))
    return budgets
