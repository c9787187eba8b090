"""Budget periods (UTC day and calendar month) and the two stores of their usage: a SQLite file and a real
redis-server (conftest's ``redis_url``)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio

from corral.gateway.budgets import RedisBudgets, SqliteBudgets, current_period


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("now", "name", "start", "end"), [
    (at(2026, 12, 6, 12, 30), "day", "2026-12-06", at(2026, 12, 7)),
    (at(2026, 12, 6), "day", "2026-12-06", at(2026, 12, 7)),  # midnight opens the day
    (at(2026, 12, 6) - 0.001, "day", "2026-12-05", at(2026, 12, 6)),
    (at(2026, 12, 31, 23, 59, 59), "month", "2026-12", at(2027, 1, 1)),  # December ends in the next year
    (at(2028, 2, 29, 8), "month", "2028-02", at(2028, 3, 1)),
    (at(2026, 3, 1), "month", "2026-03", at(2026, 4, 1)),
])
def test_current_period_is_the_utc_day_or_calendar_month(now, name, start, end):
    period = current_period(name, now)
    assert (period.name, period.start, period.end_s) == (name, start, end)
    assert period.end_iso == datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_sqlite_usage_adds_up_per_tenant_and_period_and_survives_reopening(tmp_path):
    path = str(tmp_path / "budgets.sqlite")
    day, month = current_period("day", at(2026, 12, 6, 9)), current_period("month", at(2026, 12, 6, 9))
    next_day = current_period("day", at(2026, 12, 7, 9))

    async def scenario():
        store = SqliteBudgets(path)
        assert await store.used("acme", [day, month]) == [0, 0]
        await store.charge("acme", [day, month], 40)
        await store.charge("acme", [day, month], 2)
        await store.charge("acme", [day], 0)  # nothing to record
        await store.charge("globex", [month], 7)
        assert await store.used("acme", [day, month]) == [42, 42]
        assert await store.used("acme", [month, day]) == [42, 42]
        assert await store.used("globex", [day, month]) == [0, 7]
        await store.close()
        reopened = SqliteBudgets(path)
        assert await reopened.used("acme", [next_day, month]) == [0, 42]
        await reopened.charge("acme", [next_day, month], 8)
        assert await reopened.used("acme", [day, next_day, month]) == [42, 8, 50]
        await reopened.close()
    asyncio.run(scenario())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_redis_usage_is_shared_and_expires_a_month_after_the_period(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    now = datetime.now(UTC).timestamp()
    day, month = current_period("day", now), current_period("month", now)

    async def scenario():
        one, two = redis.asyncio.Redis.from_url(redis_url), redis.asyncio.Redis.from_url(redis_url)
        a, b = RedisBudgets(one), RedisBudgets(two)
        assert await a.used("acme", [day, month]) == [0, 0]
        await a.charge("acme", [day, month], 30)
        await b.charge("acme", [day], 12)
        assert await b.used("acme", [day, month]) == [42, 30]
        assert await a.used("acme", []) == []
        expiry = await one.expiretime(f"corral:budget:acme:day:{day.start}")
        assert expiry == int(day.end_s) + 31 * 86400
        await one.aclose()
        await two.aclose()
    asyncio.run(scenario())
