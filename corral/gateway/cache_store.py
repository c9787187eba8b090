"""Where cached answers live: in this process (``MemoryCache``, LRU bounded by entries and bytes) or in Redis
(``RedisCache``, shared by a fleet of gateways). Both sit behind ``ResponseCache``; both expire entries after a
TTL; neither ever fails a request: a store that errs answers a miss and counts the error."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

_MAGIC = b"corral-cache/1\n"


@dataclass(frozen=True)
class CachedResponse:
    """A stored answer: the upstream's body bytes exactly as they reached the client (so a hit is byte-identical
    to the first answer) and their content type (always the non-streaming JSON shape; see cache_sse)."""

    body: bytes
    content_type: str = "application/json"

    def to_bytes(self) -> bytes:
        return _MAGIC + self.content_type.encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResponse:
        if not data.startswith(_MAGIC):
            raise ValueError("not a corral cache entry")
        content_type, _, body = data[len(_MAGIC):].partition(b"\n")
        return cls(body=body, content_type=content_type.decode())

    @property
    def num_bytes(self) -> int:
        return len(self.body) + len(self.content_type)


@dataclass
class CacheStats:
    """Counters for the gateway's metrics (all monotonic except the two gauges, which only MemoryCache keeps)."""

    hits: int = 0
    misses: int = 0  # lookups that found nothing, a store error included
    stores: int = 0
    bytes_stored: int = 0  # bytes written by this process, over its life
    errors: int = 0  # store errors (Redis unreachable, timeouts, a corrupt entry): each answered as a miss
    evictions: int = 0  # LRU evictions (memory)
    expirations: int = 0  # entries found past their TTL (memory)
    bypasses: int = 0  # requests whose Cache-Control: no-cache skipped the lookup (GatewayCache)
    uncacheable: int = 0  # requests the cache played no part in: sampled, not a completion body (GatewayCache)
    unreplayable: int = 0  # answers not stored: a shape replay could not reproduce, or too large (GatewayCache)
    entries: int | None = None  # gauge: entries held now (memory only)
    bytes_held: int | None = None  # gauge: bytes held now (memory only)


class ResponseCache(Protocol):
    """A key -> CachedResponse store with a TTL. ``get`` and ``put`` never raise on a store failure: a failed
    get is a miss, a failed put is dropped, and both count in ``stats.errors``."""

    stats: CacheStats

    async def get(self, key: str) -> CachedResponse | None:
        """The live entry under ``key``, or None (absent, expired, or the store failed)."""
        ...

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Stores ``entry`` for the cache's TTL, replacing any entry under ``key``."""
        ...

    async def close(self) -> None:
        """Releases connections; the cache is not used after."""
        ...


class MemoryCache:
    """An in-process LRU: at most ``max_entries`` entries and ``max_bytes`` bytes of bodies, each living
    ``ttl_s`` seconds of ``clock`` (``time.monotonic`` unless a test injects one). An entry larger than
    ``max_bytes`` is not stored. Single event loop: no locks needed, no await between read and write."""

    def __init__(self, ttl_s: float, max_entries: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedResponse]] = OrderedDict()  # key -> (expires at, entry)
        self.stats = CacheStats(entries=0, bytes_held=0)

    async def get(self, key: str) -> CachedResponse | None:
        item = self._entries.get(key)
        if item is not None and item[0] <= self.clock():
            self._remove(key)
            self.stats.expirations += 1
            item = None
        if item is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return item[1]

    async def put(self, key: str, entry: CachedResponse) -> None:
        if entry.num_bytes > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self.clock() + self.ttl_s, entry)
        self.stats.stores += 1
        self.stats.bytes_stored += entry.num_bytes
        self.stats.bytes_held = (self.stats.bytes_held or 0) + entry.num_bytes
        while len(self._entries) > self.max_entries or (self.stats.bytes_held or 0) > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)

    def _remove(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self.stats.bytes_held = (self.stats.bytes_held or 0) - entry.num_bytes
        self.stats.entries = len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()
        self.stats.entries, self.stats.bytes_held = 0, 0


class RedisCache:
    """Entries in Redis under ``{namespace}:{key}``, written with ``SET ... PX ttl`` so Redis expires them; the
    size bound is Redis's own (``maxmemory`` with ``allkeys-lru``, set by whoever runs it). Any Redis error or
    timeout is logged, counted in ``stats.errors`` and answered as a miss; after one, Redis is left alone for
    ``retry_after_s`` so that a dead Redis costs requests nothing more than a dict lookup."""

    def __init__(self, url: str, ttl_s: float, namespace: str = "corral:cache", timeout_s: float = 0.25,
                 retry_after_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        import redis.asyncio as redis  # the gateway's dependency; imported here so memory-only users never load it
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.prefix = f"{namespace}:"
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._down_until = float("-inf")
        self.stats = CacheStats()
        # No retries inside a request: the answer without the cache is only one upstream call away.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0))

    def _usable(self) -> bool:
        return self.clock() >= self._down_until

    def _failed(self, what: str, error: Exception) -> None:
        self.stats.errors += 1
        self._down_until = self.clock() + self.retry_after_s
        log.warning("response cache: Redis %s failed (%s: %s); answering without the cache for %.1f s",
                    what, type(error).__name__, error, self.retry_after_s)

    async def get(self, key: str) -> CachedResponse | None:
        data = None
        if self._usable():
            try:
                data = await self._redis.get(self.prefix + key)
            except Exception as error:  # noqa: BLE001 - any failure of the cache is a miss, never a failed request
                self._failed("GET", error)
        entry = None
        if data is not None:
            try:
                entry = CachedResponse.from_bytes(data)
            except ValueError as error:
                self.stats.errors += 1
                log.warning("response cache: ignoring a corrupt entry under %s%s: %s", self.prefix, key, error)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry

    async def put(self, key: str, entry: CachedResponse) -> None:
        if not self._usable():
            return
        try:
            await self._redis.set(self.prefix + key, entry.to_bytes(), px=self.ttl_ms)
        except Exception as error:  # noqa: BLE001 - see get
            self._failed("SET", error)
            return
        self.stats.stores += 1
        self.stats.bytes_stored += entry.num_bytes

    async def close(self) -> None:
        await self._redis.aclose()
