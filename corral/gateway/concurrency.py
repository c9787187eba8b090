"""Requests in flight per tenant, for the ``max_concurrent`` limit (limits.py): a count in this process, or a
leased slot per request in Redis, shared by every gateway using it."""

from __future__ import annotations

import uuid
from typing import Protocol


class InFlight(Protocol):
    """Requests in flight per tenant: at most ``limit`` slots held at once."""

    async def acquire(self, tenant: str, limit: int) -> str | None:
        """A new slot's id, or None when ``limit`` are held."""
        ...

    async def release(self, tenant: str, slot: str) -> None:
        """Gives ``slot`` back (once per slot acquired)."""
        ...


class MemoryInFlight:
    """A count per tenant, in this process (one event loop: no await between the read and the write)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def acquire(self, tenant: str, limit: int) -> str | None:
        count = self.counts.get(tenant, 0)
        if count >= limit:
            return None
        self.counts[tenant] = count + 1
        return "1"

    async def release(self, tenant: str, slot: str) -> None:
        count = self.counts.get(tenant, 0) - 1
        if count > 0:
            self.counts[tenant] = count
        else:
            self.counts.pop(tenant, None)


# A sorted set per tenant: slot id -> lease deadline (ms, Redis's clock). Expired leases (a gateway died with
# requests in flight) are dropped before counting, so a lost release costs a slot for one lease at most.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisInFlight:
    """Requests in flight counted in Redis, across every gateway sharing it."""

    def __init__(self, client, namespace: str, lease_s: float):
        self._acquire = client.register_script(_ACQUIRE)
        self._redis = client
        self.prefix = f"{namespace}:"
        self.lease_ms = max(1, round(lease_s * 1000))

    async def acquire(self, tenant: str, limit: int) -> str | None:
        slot = uuid.uuid4().hex
        admitted = await self._acquire(keys=[self.prefix + tenant], args=[limit, self.lease_ms, slot])
        return slot if admitted else None

    async def release(self, tenant: str, slot: str) -> None:
        await self._redis.zrem(self.prefix + tenant, slot)
