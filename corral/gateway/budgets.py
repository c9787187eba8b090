"""Token budgets per tenant and period (the UTC day, the UTC calendar month): each period's usage, persisted so
that it survives a gateway restart. ``SqliteBudgets`` keeps it in a SQLite file (WAL) for the gateways of one host;
``RedisBudgets`` in Redis for a fleet of gateways sharing one (INCRBY on a key per tenant and period, expiring
after the period's end). Redis must persist (AOF or RDB) for budgets to survive a restart of Redis itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

PeriodName = Literal["day", "month"]

# A Redis key is kept this long after its period's end, so that the last period's usage can still be read.
_REDIS_RETENTION_S = 31 * 86400


@dataclass(frozen=True)
class Period:
    """A budget period under way: ``start`` names it (``2026-12-06``, ``2026-12``), ``end_s`` is its end in
    seconds since the epoch (exclusive)."""

    name: PeriodName
    start: str
    end_s: float

    @property
    def end_iso(self) -> str:
        return datetime.fromtimestamp(self.end_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_period(name: PeriodName, now_s: float) -> Period:
    """The UTC day or calendar month holding ``now_s`` (seconds since the epoch)."""
    now = datetime.fromtimestamp(now_s, UTC)
    if name == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period("day", start.strftime("%Y-%m-%d"), start.timestamp() + 86400)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return Period("month", start.strftime("%Y-%m"), end.timestamp())


class BudgetStore(Protocol):
    """Tokens used per tenant and period. ``charge`` adds to every period given in one step; usage only grows."""

    async def used(self, tenant: str, periods: Sequence[Period]) -> list[int]:
        """The tokens ``tenant`` has used in each of ``periods`` (0 for a period not charged yet)."""
        ...

    async def charge(self, tenant: str, periods: Sequence[Period], tokens: int) -> None:
        """Adds ``tokens`` (>= 0) to ``tenant``'s usage in each of ``periods``."""
        ...

    async def close(self) -> None:
        ...


class SqliteBudgets:
    """Usage in a table of a SQLite file: one row per tenant and period. Calls run on the event loop: a lookup by
    primary key or an upsert in WAL mode with ``synchronous=NORMAL`` (no fsync per commit) takes microseconds,
    less than a hop to a thread would. Several processes may share the file (WAL); several hosts may not."""

    def __init__(self, path: str):
        self.path = path
        # The connection is made on one thread and used on the event loop's, never on two at once.
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=1.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS budget_usage (tenant TEXT NOT NULL, period TEXT NOT NULL, "
                         "start TEXT NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (tenant, period, start))")
        self._db.commit()

    async def used(self, tenant: str, periods: Sequence[Period]) -> list[int]:
        used = []
        for period in periods:
            row = self._db.execute("SELECT tokens FROM budget_usage WHERE tenant = ? AND period = ? AND start = ?",
                                   (tenant, period.name, period.start)).fetchone()
            used.append(row[0] if row else 0)
        return used

    async def charge(self, tenant: str, periods: Sequence[Period], tokens: int) -> None:
        if tokens <= 0 or not periods:
            return
        with self._db:  # one transaction, one commit for every period
            self._db.executemany(
                "INSERT INTO budget_usage (tenant, period, start, tokens) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant, period, start) DO UPDATE SET tokens = tokens + excluded.tokens",
                [(tenant, period.name, period.start, tokens) for period in periods])

    async def close(self) -> None:
        self._db.close()


class RedisBudgets:
    """Usage under ``{namespace}:{tenant}:{period}:{start}`` in Redis, shared by every gateway using it; each key
    expires a month after its period's end. ``client`` is a ``redis.asyncio.Redis`` its owner closes."""

    def __init__(self, client, namespace: str = "corral:budget"):
        self._redis = client
        self.prefix = f"{namespace}:"

    def _key(self, tenant: str, period: Period) -> str:
        return f"{self.prefix}{tenant}:{period.name}:{period.start}"

    async def used(self, tenant: str, periods: Sequence[Period]) -> list[int]:
        if not periods:
            return []
        values = await self._redis.mget([self._key(tenant, period) for period in periods])
        return [int(value or 0) for value in values]

    async def charge(self, tenant: str, periods: Sequence[Period], tokens: int) -> None:
        if tokens <= 0 or not periods:
            return
        async with self._redis.pipeline(transaction=False) as pipe:  # one round trip
            for period in periods:
                key = self._key(tenant, period)
                pipe.incrby(key, tokens)
                pipe.expireat(key, int(period.end_s) + _REDIS_RETENTION_S)
            await pipe.execute()

    async def close(self) -> None:
        pass  # the client is its owner's
