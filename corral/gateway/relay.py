"""Forwarding one request to a group: pick a backend, send, retry on another while nothing has reached the
client, then relay the answer (a body as is, or a stream chunk by chunk). The client going away at any point
closes the upstream connection at once, which is how a replica learns to abort the request. The upstream side
is aiohttp: a third of httpx's CPU per streamed request (docs/gateway.md#benchmarks), which is the relay's cost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from fastapi import Request
from fastapi.responses import Response

from corral.gateway.backends import Backend, Group
from corral.gateway.errors import GatewayError, error_event
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.routing import RouteRequest
from corral.gateway.tenants import TenantConfig

if TYPE_CHECKING:
    from corral.gateway.guard_path import RequestGuard
    from corral.gateway.guard_stream import StreamGuard
    from corral.gateway.stream_tap import StreamTap

logger = logging.getLogger("corral.gateway")

# Upstream failures worth another backend (and counted towards ejection): the replica is down or broken.
_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_TIMER_SLACK_S = 0.01


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass
class RouteTrace:
    """Where a request went, for its audit record: the group, backend and routing decision of the attempt that
    answered (the last one), or ``route="cache"`` for a cache hit. One object per request, shared by the copies
    of its context that fallback makes."""

    group: str | None = None
    backend: str | None = None
    route: str | None = None


@dataclass
class RequestContext:
    """One request on its way through the gateway."""

    http: Request
    path: str
    body: dict
    group: Group
    request_id: str
    arrival: float
    deadline: float
    stream: bool = False
    route: RouteRequest = field(default_factory=RouteRequest)
    # Who sent it, when auth is enabled (auth.py); None otherwise.
    tenant: str | None = None
    tenant_config: TenantConfig | None = None
    key_id: str | None = None
    priority: int | None = None  # the tenant's class or the client's own, when either sets one (tenants.py)
    trace: RouteTrace = field(default_factory=RouteTrace)
    # The limits or the audit need the token counts: a stream is forwarded asking for its usage (usage.py).
    count_usage: bool = False
    # The tenant's content policy, or the gateway's (guard_path.py); None when none applies.
    guard: RequestGuard | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        """Whether the request's time limit has passed. A timer set to the deadline may fire a little early
        (uvloop's timers have millisecond granularity), so the last few milliseconds count as passed."""
        return self.remaining() <= _TIMER_SLACK_S

    @property
    def local_only(self) -> bool:
        return self.tenant_config is not None and self.tenant_config.local_only


@dataclass
class _Failure:
    """An attempt that failed before its first byte; ``status``/``body`` kept to pass through if it was the last."""

    reason: str
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"


async def until_disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    # The body has been read, so the next ASGI message is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_client(http: Request, awaitable: Awaitable, timeout_s: float):
    """``awaitable``'s result, unless the client disconnects first (ClientGone) or ``timeout_s`` passes
    (TimeoutError); either way it is cancelled."""
    task = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(until_disconnected(http.receive))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        late = await task  # finished between the wait and the cancel: an open response to close
        if isinstance(late, aiohttp.ClientResponse):
            late.close()
    raise ClientGone() if gone in done else TimeoutError()


class Forwarder:
    """Sends requests to backends over one shared connection pool and relays their answers."""

    def __init__(self, session: aiohttp.ClientSession, metrics: GatewayMetrics):
        self.session = session
        self.metrics = metrics

    async def forward(self, ctx: RequestContext) -> Response:
        """Tries up to ``retries + 1`` backends of the group, never the same one twice. Raises GatewayError(503)
        when none is available, or passes the last upstream 5xx through when every attempt failed."""
        group, tried, failure = ctx.group, set(), None
        for attempt in range(group.config.retries + 1):
            now = time.monotonic()
            candidates = group.candidates(now, tried, on_premises_only=ctx.local_only)
            if not candidates or ctx.expired():
                break
            decision = group.router.pick(ctx.route, candidates, now)
            backend = decision.backend
            tried.add(backend.name)
            if attempt > 0:
                self.metrics.retries.labels(group=group.name, backend=backend.name).inc()
            outcome = await self._attempt(ctx, backend, decision.reason)
            if isinstance(outcome, Response):
                return outcome
            failure = outcome
            logger.warning("request %s failed on %s before its first byte (%s)", ctx.request_id, backend.name,
                           outcome.reason)
        if failure is not None and failure.status is not None:
            return Response(failure.body, status_code=failure.status, media_type=failure.content_type)
        if failure is not None and ctx.expired():
            raise GatewayError(504, f"no answer from group {group.name!r} within the request's time limit",
                               code="timeout")
        reason = f" (last: {failure.reason})" if failure is not None else ""
        raise GatewayError(503, f"no backend of {group.name!r} is available{reason}", code="no_backend_available")

    async def _attempt(self, ctx: RequestContext, backend: Backend, route: str) -> Response | _Failure:
        group = ctx.group
        backend.in_flight += 1
        done = _Done(self.metrics, ctx, backend, route)
        try:
            upstream = await race_client(ctx.http, self._send(ctx, backend), self._first_byte_s(ctx))
        except ClientGone:
            done.finish(499)
            return Response(status_code=499)
        except (TimeoutError, aiohttp.ClientError) as error:
            return done.fail(_Failure(_describe(error)))
        if upstream.status in _RETRYABLE_STATUS:
            body = await _read_quietly(upstream)
            return done.fail(_Failure(f"status {upstream.status}", upstream.status, body,
                                      upstream.headers.get("content-type", "application/json")))
        headers = {"x-request-id": ctx.request_id}
        if "retry-after" in upstream.headers:  # a 429's advice, passed on (and to the fallback's 429)
            headers["retry-after"] = upstream.headers["retry-after"]
        media_type = upstream.headers.get("content-type", "application/json")
        chunks = upstream.content.iter_any()
        try:
            if not (ctx.stream and media_type.startswith("text/event-stream")):
                body = await race_client(ctx.http, upstream.read(), ctx.remaining())
            else:
                body = await race_client(ctx.http, anext(chunks), min(group.config.timeouts.first_byte_s,
                                                                      ctx.remaining()))
        except ClientGone:
            upstream.close()
            done.finish(499)
            return Response(status_code=499)
        except StopAsyncIteration:
            body = b""  # an empty stream; the relay finds it exhausted too
        except (TimeoutError, aiohttp.ClientError) as error:
            upstream.close()
            return done.fail(_Failure(_describe(error)))
        group.record_success(backend)
        done.first_byte()
        if not (ctx.stream and media_type.startswith("text/event-stream")):
            done.finish(upstream.status)
            upstream.release()
            return Response(body, status_code=upstream.status, media_type=media_type, headers=headers)
        return RelayResponse(body, chunks, upstream, done, ctx, status_code=upstream.status,
                             media_type=media_type, headers=headers)

    async def _send(self, ctx: RequestContext, backend: Backend) -> aiohttp.ClientResponse:
        body = ctx.body
        if backend.config.model is not None:
            body = {**body, "model": backend.config.model}
        if ctx.priority is not None and backend.config.takes_priority:
            body = {**body, "priority": ctx.priority}
        headers = {"content-type": "application/json", "x-request-id": ctx.request_id, "accept-encoding": "identity"}
        if backend.config.api_key is not None:
            headers["authorization"] = f"Bearer {backend.config.api_key}"
        timeouts = ctx.group.config.timeouts
        # No read timeout here: first_byte_s, idle_s and the request's deadline bound the waits (race_client).
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeouts.connect_s, sock_read=None)
        return await self.session.post(backend.url + ctx.path, data=json.dumps(body).encode(), headers=headers,
                                       timeout=timeout)

    def _first_byte_s(self, ctx: RequestContext) -> float:
        # A non-streaming answer's headers come only with the whole answer.
        limit = ctx.group.config.timeouts.first_byte_s if ctx.stream else ctx.remaining()
        return min(limit, ctx.remaining())


class _Done:
    """The bookkeeping of one attempt, run exactly once when it ends: in-flight count, ejection, metrics."""

    def __init__(self, metrics: GatewayMetrics, ctx: RequestContext, backend: Backend, route: str):
        self.metrics, self.ctx, self.backend, self.route = metrics, ctx, backend, route
        self.finished = False
        ctx.trace.group, ctx.trace.backend, ctx.trace.route = ctx.group.name, backend.name, route

    def first_byte(self) -> None:
        self.metrics.ttft.labels(group=self.ctx.group.name).observe(time.monotonic() - self.ctx.arrival)

    def fail(self, failure: _Failure) -> _Failure:
        if not self.ctx.expired():
            self.ctx.group.record_failure(self.backend, time.monotonic())
            self.finish(failure.status or 502)
        else:  # the request's own time limit, which a client may set short: no fault of the backend's
            self.finish(504)
        return failure

    def finish(self, status: int | str) -> None:
        if not self.finished:
            self.finished = True
            self.backend.in_flight -= 1
            group = self.ctx.group.name
            self.metrics.requests.labels(group=group, backend=self.backend.name, status=str(status),
                                         route=self.route).inc()
            self.metrics.e2e.labels(group=group).observe(time.monotonic() - self.ctx.arrival)


class RelayResponse(Response):
    """Relays an SSE stream chunk by chunk as it arrives. The client leaving cancels the relay and closes the
    upstream stream; the backend failing mid-stream ends the stream with an OpenAI-shaped error event. With a
    ``tap`` (stream_tap.py), whole events are relayed and ``[DONE]`` waits for the request's bookkeeping."""

    def __init__(self, first: bytes, chunks: AsyncIterator[bytes], upstream: aiohttp.ClientResponse, done: _Done,
                 ctx: RequestContext, status_code: int, media_type: str, headers: dict[str, str]):
        # Not Response.__init__: with no body set, init_headers adds no content-length (chunked, as streamed).
        self.status_code, self.media_type, self.background = status_code, media_type, None
        self.init_headers(headers)
        self.first, self.chunks, self.upstream, self.done, self.ctx = first, chunks, upstream, done, ctx
        self.outcome: int | str = self.status_code
        self.error_status: int | None = None  # the status of the error event that ended the stream
        self.relayed_all = False  # every upstream byte reached the client (it may then close before our end)
        # Called with every upstream chunk once a whole 200 stream reached the client (the response cache).
        self.on_complete: Callable[[list[bytes]], Awaitable[None]] | None = None
        self.relayed: list[bytes] = []
        self.tap: StreamTap | None = None
        self.stream_guard: StreamGuard | None = None  # the output checks, which the tap applies (guard_stream.py)
        self._last_sent = b""

    async def __call__(self, scope, receive, send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        gone = asyncio.ensure_future(until_disconnected(receive))
        try:
            done, _ = await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done and not self.relayed_all and self.outcome == self.status_code:
                self.outcome = 499
            elif relay in done and relay.exception() is not None:  # e.g. the client's socket failed on a send
                logger.warning("request %s: relay failed: %r", self.ctx.request_id, relay.exception())
                self.outcome = 499
        finally:
            for task in (relay, gone):
                task.cancel()
            # Its own task, so that it completes even if this one is cancelled again (server shutdown).
            await asyncio.shield(asyncio.ensure_future(self._close()))

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            self.upstream.close()
        self.done.finish(self.outcome)
        if self.tap is not None:
            await self.tap.close(self.outcome if isinstance(self.outcome, int) else self.error_status or 502)
        if self.on_complete is not None and self.relayed_all and self.outcome == self.status_code == 200:
            try:
                await self.on_complete(self.relayed)
            except Exception:  # noqa: BLE001 - the answer is out; a failed store is only logged
                logger.exception("request %s: storing the relayed stream failed", self.ctx.request_id)

    async def _relay(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await self._pass_on(self.first, send)
        idle_s = self.ctx.group.config.timeouts.idle_s
        while self.tap is None or self.tap.status == 200:  # a refused answer is not read further
            try:
                # asyncio.timeout, not wait_for: wait_for wraps each read in a Task of its own, per chunk.
                async with asyncio.timeout(min(idle_s, max(self.ctx.remaining(), 0.0))):
                    chunk = await anext(self.chunks)
            except StopAsyncIteration:
                if self.tap is not None:
                    await self._send(self.tap.flush(), send)
                self.relayed_all = True
                break
            except (TimeoutError, aiohttp.ClientError) as error:
                await self._send(self._error(error, self._last_sent), send)
                break
            await self._pass_on(chunk, send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pass_on(self, chunk: bytes, send) -> None:
        if self.on_complete is not None:
            self.relayed.append(chunk)
        if self.tap is None:
            await self._send(chunk, send)
            # A client may close as soon as it reads the last event, before the upstream's end arrives.
            self.relayed_all = chunk.endswith(b"data: [DONE]\n\n")
            return
        await self._send(self.tap.feed(chunk), send)
        if self.tap.done and not self.relayed_all:
            await self._send(await self.tap.finish(), send)
            self.relayed_all = True

    async def _send(self, body: bytes, send) -> None:
        if body:
            self._last_sent = body
            await send({"type": "http.response.body", "body": body, "more_body": True})

    def _error(self, error: Exception, last: bytes) -> bytes:
        backend, group = self.done.backend, self.ctx.group
        self.outcome = "stream_error"
        self.done.metrics.stream_errors.labels(group=group.name, backend=backend.name).inc()
        if isinstance(error, aiohttp.ClientError):
            group.record_failure(backend, time.monotonic())
            message, status = f"backend {backend.name} failed mid-stream: {_describe(error)}", 502
        else:
            message, status = "the stream exceeded its time limit", 504
        self.error_status = status
        logger.warning("request %s: %s", self.ctx.request_id, message)
        separator = b"" if not last or last.endswith(b"\n\n") else b"\n\n"  # end a half-relayed event first
        return separator + error_event(status, message)


async def _read_quietly(upstream: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream.read()
    except aiohttp.ClientError:
        return b""
    finally:
        upstream.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return "timed out"
    return f"{type(error).__name__}: {error}".rstrip(": ")
