"""The gateway's response cache (issue 24, item 7): exact match on a canonical key, deterministic requests only
unless configured otherwise, TTL and LRU, ``Cache-Control``, SSE replay, memory or Redis. ``GatewayCache`` is
what the request path calls; the pieces (cache_key, cache_sse, cache_store) are public for tests and metrics.

Request path (docs/gateway-cache.md)::

    plan = cache.plan(group, path, body, request.headers, tenant)   # after auth/limits/guards, before routing
    entry = await cache.lookup(plan)
    if entry: return cache.render(plan, entry)                        # bytes, or SSE events, + media type
    ... relay upstream; on a 200 that reached the client in full:
    await cache.store_response(plan, body_bytes)   or   await cache.store_stream(plan, relayed_sse_chunks)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.gateway.cache_key import CacheDirectives, cache_control, cache_key, is_cacheable
from corral.gateway.cache_sse import NotReplayable, assemble_from_sse, replay_as_sse, replayable
from corral.gateway.cache_store import CachedResponse, CacheStats, MemoryCache, RedisCache, ResponseCache

__all__ = ["CacheConfig", "CachePlan", "GatewayCache", "open_store", "CachedResponse", "CacheStats",
           "ResponseCache", "MemoryCache", "RedisCache", "CacheDirectives", "cache_control", "cache_key",
           "is_cacheable", "assemble_from_sse", "replay_as_sse", "replayable", "NotReplayable"]

log = logging.getLogger(__name__)


class CacheConfig(BaseModel):
    """The ``cache:`` section of gateway.yaml. Off by default: a cache answers from the past, and whoever runs
    the gateway should decide that identical requests may share an answer (and for how long)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # e.g. redis://10.0.0.5:6379/0; required for the redis backend
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)  # memory backend; Redis is bounded by its own maxmemory
    max_bytes: int = Field(default=256 * 2**20, ge=1)  # memory backend: bodies held, in bytes
    max_entry_bytes: int = Field(default=2**20, ge=1)  # both: a larger answer is not stored
    cache_sampled: bool = False  # also cache requests that sample (temperature > 0 and no seed)
    namespace: str = Field(default="corral:cache", min_length=1)  # Redis key prefix: one per fleet (or version)
    redis_timeout_s: float = Field(default=0.25, gt=0)  # connect and command timeout; past it, a miss

    @model_validator(mode="after")
    def _redis_needs_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("cache.backend redis needs cache.redis_url (e.g. redis://127.0.0.1:6379/0)")
        return self


def open_store(config: CacheConfig) -> ResponseCache:
    """The store the config names (nothing connects until the first command)."""
    if config.backend == "redis":
        assert config.redis_url is not None  # the validator's promise
        return RedisCache(config.redis_url, config.ttl_s, namespace=config.namespace, timeout_s=config.redis_timeout_s)
    return MemoryCache(config.ttl_s, max_entries=config.max_entries, max_bytes=config.max_bytes)


@dataclass(frozen=True)
class CachePlan:
    """What the cache does for one request, decided before it is routed. ``key`` is None when the cache plays
    no part (disabled, sampled, not a completion body); then ``lookup`` and ``store`` are False."""

    key: str | None
    lookup: bool
    store: bool
    reason: str
    path: str
    stream: bool = False
    include_usage: bool = False


class GatewayCache:
    """The cache as the request path sees it: plan, lookup, render a hit, store an answer. Never raises on a
    store failure (a miss), and stores only answers it can replay faithfully in both shapes."""

    def __init__(self, config: CacheConfig, store: ResponseCache | None = None):
        self.config = config
        self.store = store if store is not None else open_store(config)

    @property
    def stats(self) -> CacheStats:
        return self.store.stats

    def plan(self, group: str, path: str, body: Any, headers: Mapping[str, str] | Iterable[tuple[str, str]],
             tenant: str | None = None) -> CachePlan:
        """Whether to look up and store this request, and its key. ``body`` is the parsed JSON body as it will
        be forwarded (after the gateway's own clamps), ``headers`` the client's (for ``Cache-Control``)."""
        verdict = is_cacheable(body, self.config)
        if not verdict:
            if self.config.enabled:
                self.stats.uncacheable += 1
            return CachePlan(None, False, False, verdict.reason, path)
        directives = cache_control(headers)
        if directives.no_cache:
            self.stats.bypasses += 1
        options = body.get("stream_options")
        return CachePlan(
            key=cache_key(group, path, body, tenant), lookup=not directives.no_cache, store=not directives.no_store,
            reason=verdict.reason, path=path, stream=body.get("stream") is True,
            include_usage=isinstance(options, Mapping) and options.get("include_usage") is True,
        )

    async def lookup(self, plan: CachePlan) -> CachedResponse | None:
        if not plan.lookup or plan.key is None:
            return None
        return await self.store.get(plan.key)

    def render(self, plan: CachePlan, entry: CachedResponse) -> tuple[bytes | Iterator[bytes], str]:
        """(content, media type) for a hit: the stored bytes unchanged, or, when the request streams, an
        iterator of SSE events (usage only if the request asked for it; the whole answer is already here, so
        ``b"".join`` of it as one body is as good as streaming it)."""
        if not plan.stream:
            return entry.body, entry.content_type
        return replay_as_sse(json.loads(entry.body), plan.path, include_usage=plan.include_usage), "text/event-stream"

    async def store_response(self, plan: CachePlan, body: bytes, content_type: str = "application/json") -> bool:
        """Stores a complete non-streaming 200 answer (the bytes sent to the client). False when the cache
        refuses it (the plan says no, not replayable, too large); a store failure is counted, not raised."""
        if not plan.store or plan.key is None:
            return False
        try:
            response = json.loads(body)
        except ValueError:
            response = None
        return await self._put(plan, response, body, content_type)

    async def store_stream(self, plan: CachePlan, chunks: Iterable[bytes]) -> bool:
        """Stores a complete streamed 200 answer (the SSE bytes relayed, ``[DONE]`` included) in its
        non-streaming shape. A stream cut short, ending in an error event, or of an unknown shape is not stored."""
        if not plan.store or plan.key is None:
            return False
        try:
            response = assemble_from_sse(chunks, plan.path)
        except NotReplayable:
            response = None
        except Exception:  # noqa: BLE001 - an odd stream is not stored; it never fails the request
            log.exception("response cache: assembling a stream failed; not stored")
            response = None
        body = json.dumps(response, ensure_ascii=False).encode()
        return await self._put(plan, response, body, "application/json")

    async def _put(self, plan: CachePlan, response: Any, body: bytes, content_type: str) -> bool:
        assert plan.key is not None
        if len(body) > self.config.max_entry_bytes or not replayable(response, plan.path):
            self.stats.unreplayable += 1
            return False
        await self.store.put(plan.key, CachedResponse(body, content_type))
        return True

    async def close(self) -> None:
        await self.store.close()
