"""Fallback between model groups (issue 24, item 5). A group that lists ``fallbacks`` sends a request on to
the first of them that can take it when it cannot answer itself: no backend available, every backend at or over
its ``overload`` load, an upstream 429 or 503 before any byte, or a prompt too long for it (over its
``max_prompt_chars``, or its replica's own ``context_length_exceeded`` 400: the context-window fallback). Chains
are followed (``a -> b -> c``: b's fallbacks after a's). The answer carries ``x-corral-fallback: <from>-><to>``
and its body the model that answered; a counter keeps them by from, to and reason. A group that names
fallbacks, or forbids them with ``allow_fallback: false``, answers 429 with ``Retry-After`` when neither it nor
a fallback can answer."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Protocol

from fastapi.responses import Response

from corral.gateway.backends import Group
from corral.gateway.errors import GatewayError
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.relay import Forwarder, RelayResponse, RequestContext
from corral.gateway.routing import load_of
from corral.gateway.token_limits import clamp_max_tokens, prompt_error, prompt_too_long

FALLBACK_HEADER = "x-corral-fallback"
_FALL_STATUS = frozenset({429, 503})
_RETRY_AFTER_S = "1"


class ReplicaStarter(Protocol):
    """An autoscaled group's controller (autoscale/local.py), as a fallback hop uses it."""

    async def wait_for_replica(self, deadline: float) -> None: ...


class Fallbacks:
    """Forwards a request to its group, and on to its fallbacks when the group cannot answer. ``scalers``: the
    autoscaled groups' controllers by group, so that a fallback at zero replicas is woken like its own
    requests wake it (a cold start), rather than passed over."""

    def __init__(self, groups: dict[str, Group], forwarder: Forwarder, metrics: GatewayMetrics,
                 scalers: Mapping[str, ReplicaStarter] | None = None):
        self.groups, self.forwarder, self.metrics = groups, forwarder, metrics
        self.scalers = scalers if scalers is not None else {}

    async def forward(self, ctx: RequestContext) -> tuple[Response, str | None]:
        """The answer, and the group that gave it when it was a fallback (None when the request's own)."""
        falls = ctx.group.config.answers_429
        reason, refusal = precheck(ctx.group, ctx.body, falls, ctx.local_only), None
        if reason is None:
            response = await self._try(ctx, falls)
            if response is not None:
                reason = fall_reason(response, falls)
                if reason is None:
                    return response, None
                refusal = response
            else:
                reason = "no_backend"
        return await self._fall_back(ctx, reason, refusal)

    async def _try(self, ctx: RequestContext, falls: bool) -> Response | None:
        """The group's answer, or None when it had no backend to give one (and ``falls``: may fall back)."""
        try:
            return await self.forwarder.forward(ctx)
        except GatewayError as error:
            if error.status == 503 and falls:
                return None
            raise

    async def _fall_back(self, ctx: RequestContext, reason: str,
                         refusal: Response | None) -> tuple[Response, str | None]:
        """Tries the fallbacks in chain order; ``refusal`` is the primary's own answer that made it fall back
        (an upstream 429/503, or its replica's context-length 400), passed on when no fallback answers."""
        origin = ctx.group
        if origin.config.fallback_allowed:
            for name in fallback_chain(self.groups, origin.name):
                target = self.groups[name]
                why = precheck(target, ctx.body, True, ctx.local_only)
                if why == "no_backend" and await self._woken(ctx, target):
                    why = precheck(target, ctx.body, True, ctx.local_only)
                if why is not None:
                    continue
                self.metrics.fallbacks.labels(origin.name, name, reason).inc()
                body = clamp_max_tokens({**ctx.body, "model": name}, target.config)
                hop = dataclasses.replace(ctx, group=target, body=body)
                response = await self._try(hop, True)
                if response is None or fall_reason(response, True) is not None:
                    continue
                response.headers[FALLBACK_HEADER] = f"{origin.name}->{name}"
                return response, name
        if reason == "context_window":
            if refusal is not None:
                return refusal, None  # the replica's own 400, which counted the prompt's tokens
            raise prompt_error(ctx.body, origin.name, origin.config)
        what = "a fallback" if origin.config.fallback_allowed else "no fallback allowed"
        retry_after = refusal.headers.get("retry-after") if refusal is not None else None
        raise GatewayError(429, f"model {origin.name!r} cannot take the request now ({reason}; {what} could "
                                f"either); retry later", code="rate_limit_exceeded",
                           headers={"retry-after": retry_after or _RETRY_AFTER_S})

    async def _woken(self, ctx: RequestContext, target: Group) -> bool:
        """Waits for an autoscaled ``target`` to have a replica (starting one if it has none), bounded by the
        request's deadline and the group's ``startup_timeout_s``; False for a group that is not autoscaled or
        whose host fits no replica."""
        scaler = self.scalers.get(target.name)
        if scaler is None:
            return False
        startup_s = target.config.replicas.startup_timeout_s
        try:
            await scaler.wait_for_replica(min(ctx.deadline, time.monotonic() + startup_s))
        except GatewayError:  # no_capacity: on to the next fallback
            return False
        return True


def fallback_chain(groups: dict[str, Group], origin: str) -> list[str]:
    """The groups a request to ``origin`` may fall back to, in the order tried: its own fallbacks, then theirs
    (breadth first; a group that forbids fallback ends its branch). Config validation rules out cycles."""
    chain: list[str] = []
    frontier = [origin]
    while frontier:
        following = []
        for name in frontier:
            config = groups[name].config
            if not config.fallback_allowed:
                continue
            for target in config.fallbacks:
                if target != origin and target not in chain:
                    chain.append(target)
                    following.append(target)
        frontier = following
    return chain


def on_premises_reachable(groups: dict[str, Group], origin: str) -> bool:
    """Whether ``origin`` or a group of its fallback chain has a backend a ``local_only`` tenant may reach."""
    # From the config, not the live backends: an autoscaled group at zero replicas has none, yet a local one to start.
    return any(backend.local is not None or backend.on_premises
               for name in (origin, *fallback_chain(groups, origin)) for backend in groups[name].config.backends)


def precheck(group: Group, body: dict, falls: bool, on_premises_only: bool = False) -> str | None:
    """Why ``group`` cannot take ``body`` before anything is sent (None when it may): a prompt over its limit,
    or, when it ``falls`` back, no backend available (on premises, for a ``local_only`` tenant) or (with
    ``overload`` set) every backend at or over it."""
    config = group.config
    if prompt_too_long(body, config):
        return "context_window"
    if not falls:
        return None  # as before fallback: the forwarder's own 503
    candidates = group.candidates(time.monotonic(), on_premises_only=on_premises_only)
    if not candidates:
        return "no_backend"
    weight = config.routing.kv_usage_weight
    if config.overload is not None and all(load_of(b, weight) >= config.overload for b in candidates):
        return "overloaded"
    return None


def fall_reason(response: Response, falls: bool) -> str | None:
    """Why an answer that came back before any byte reached the client sends the request on (None when it is
    the answer): an upstream 429/503, or a 400 whose code is ``context_length_exceeded`` (the replica counted
    the prompt's tokens against its context: the context-window fallback). Never a stream under way."""
    if not falls or isinstance(response, RelayResponse):
        return None
    if response.status_code in _FALL_STATUS:
        return f"upstream_{response.status_code}"
    if response.status_code == 400 and _error_code(response.body) == "context_length_exceeded":
        return "context_window"
    return None


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None
