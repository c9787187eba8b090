"""The response cache in the request path (docs/gateway-cache.md): a hit answered from the cache, a miss's
answer stored once the whole 200 reached the client, and the cache's counters at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.background import BackgroundTask

from corral.gateway.cache import CachedResponse, CachePlan, GatewayCache
from corral.gateway.relay import RelayResponse, RequestContext

CACHE_HEADER = "x-corral-cache"

# CacheStats field -> (metric name less corral_gateway_cache_, help).
_COUNTERS = {
    "hits": ("hits", "Requests answered from the response cache."),
    "misses": ("misses", "Cache lookups that found nothing (a store error included)."),
    "stores": ("stores", "Answers stored in the response cache."),
    "bytes_stored": ("stored_bytes", "Bytes written to the response cache by this gateway."),
    "errors": ("errors", "Cache store errors (Redis unreachable, timeouts, corrupt entries), each a miss."),
    "evictions": ("evictions", "Entries evicted by the memory cache's bounds."),
    "expirations": ("expirations", "Entries found past their TTL (memory cache)."),
    "bypasses": ("bypasses", "Requests whose Cache-Control: no-cache skipped the lookup."),
    "uncacheable": ("uncacheable", "Requests the cache played no part in (sampled, not a completion body)."),
    "unreplayable": ("unreplayable", "Answers not stored: not replayable, or over max_entry_bytes."),
}
_GAUGES = {"entries": ("entries", "Entries held (memory cache)."),
           "bytes_held": ("bytes", "Bytes held (memory cache).")}


class CacheCollector(Collector):
    """Reads the cache's stats at scrape time, so /metrics never drifts from them."""

    def __init__(self, cache: GatewayCache):
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.cache.stats
        for field, (name, text) in _COUNTERS.items():
            yield CounterMetricFamily(f"corral_gateway_cache_{name}", text, value=getattr(stats, field))
        for field, (name, text) in _GAUGES.items():
            value = getattr(stats, field)
            if value is not None:
                yield GaugeMetricFamily(f"corral_gateway_cache_{name}", text, value=value)


def plan(cache: GatewayCache, ctx: RequestContext) -> CachePlan:
    return cache.plan(ctx.group.name, ctx.path, ctx.body, ctx.http.headers, tenant=ctx.tenant)


def header_value(plan: CachePlan, hit: bool) -> str:
    if hit:
        return "hit"
    return "miss" if plan.lookup else "bypass"


def hit_response(cache: GatewayCache, plan: CachePlan, entry: CachedResponse, request_id: str) -> Response:
    """The cached answer: the stored bytes, or for a stream its SSE replay, sent as one body."""
    content, media_type = cache.render(plan, entry)
    body = content if isinstance(content, bytes) else b"".join(content)
    return Response(body, status_code=200, media_type=media_type,
                    headers={CACHE_HEADER: "hit", "x-request-id": request_id})


def store_after(cache: GatewayCache, plan: CachePlan, response: Response) -> None:
    """Arranges for a miss's 200 answer to be stored once the client has it all: a body after it is sent
    (a background task), a stream once its ``[DONE]`` was relayed (never a cut or failed stream)."""
    if not plan.store or response.status_code != 200:
        return
    if isinstance(response, RelayResponse):
        async def store_stream(chunks: list[bytes]) -> None:
            await cache.store_stream(plan, chunks)

        response.on_complete = store_stream
        return
    media_type = response.headers.get("content-type", "application/json")
    response.background = BackgroundTask(cache.store_response, plan, bytes(response.body), media_type)
