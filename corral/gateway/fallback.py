"""Fallback between model groups (issue 24, item 5). A group that lists ``fallbacks`` sends a request on to
the first of them that can take it when it cannot answer itself: no backend available, every backend at or over
its ``overload`` load, an upstream 429 or 503 before any byte, or a prompt over its ``max_prompt_chars`` (the
context-window fallback). The answer carries ``x-corral-fallback: <from>-><to>`` and its body the model that
answered; a counter keeps them by from, to and reason. A group that names fallbacks, or forbids them with
``allow_fallback: false``, answers 429 with ``Retry-After`` when neither it nor a fallback can answer."""

from __future__ import annotations

import dataclasses
import time

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


class Fallbacks:
    """Forwards a request to its group, and on to its fallbacks when the group cannot answer."""

    def __init__(self, groups: dict[str, Group], forwarder: Forwarder, metrics: GatewayMetrics):
        self.groups, self.forwarder, self.metrics = groups, forwarder, metrics

    async def forward(self, ctx: RequestContext) -> tuple[Response, str | None]:
        """The answer, and the group that gave it when it was a fallback (None when the request's own)."""
        falls = ctx.group.config.answers_429
        reason, retry_after = precheck(ctx.group, ctx.body, falls), None
        if reason is None:
            response = await self._try(ctx, falls)
            if response is not None and not _fell(response, falls):
                return response, None
            reason = "no_backend" if response is None else f"upstream_{response.status_code}"
            retry_after = response.headers.get("retry-after") if response is not None else None
        return await self._fall_back(ctx, reason, retry_after)

    async def _try(self, ctx: RequestContext, falls: bool) -> Response | None:
        """The group's answer, or None when it had no backend to give one (and ``falls``: may fall back)."""
        try:
            return await self.forwarder.forward(ctx)
        except GatewayError as error:
            if error.status == 503 and falls:
                return None
            raise

    async def _fall_back(self, ctx: RequestContext, reason: str, retry_after: str | None) -> tuple[Response, str]:
        origin = ctx.group
        if origin.config.fallback_allowed:
            for name in origin.config.fallbacks:
                target = self.groups[name]
                if precheck(target, ctx.body, True) is not None:
                    continue
                self.metrics.fallbacks.labels(origin.name, name, reason).inc()
                body = clamp_max_tokens({**ctx.body, "model": name}, target.config)
                hop = dataclasses.replace(ctx, group=target, body=body)
                response = await self._try(hop, True)
                if response is None or _fell(response, True):
                    continue
                response.headers[FALLBACK_HEADER] = f"{origin.name}->{name}"
                return response, name
        if reason == "context_window":
            raise prompt_error(ctx.body, origin.name, origin.config)
        what = "a fallback" if origin.config.fallback_allowed else "no fallback allowed"
        raise GatewayError(429, f"model {origin.name!r} cannot take the request now ({reason}; {what} could "
                                f"either); retry later", code="rate_limit_exceeded",
                           headers={"retry-after": retry_after or _RETRY_AFTER_S})


def precheck(group: Group, body: dict, falls: bool) -> str | None:
    """Why ``group`` cannot take ``body`` before anything is sent (None when it may): a prompt over its limit,
    or, when it ``falls`` back, no backend available or (with ``overload`` set) every backend at or over it."""
    config = group.config
    if prompt_too_long(body, config):
        return "context_window"
    if not falls:
        return None  # as before fallback: the forwarder's own 503
    candidates = group.candidates(time.monotonic())
    if not candidates:
        return "no_backend"
    weight = config.routing.kv_usage_weight
    if config.overload is not None and all(load_of(b, weight) >= config.overload for b in candidates):
        return "overloaded"
    return None


def _fell(response: Response, falls: bool) -> bool:
    """An upstream 429/503 before any byte, when the group falls back (never a stream under way)."""
    return falls and response.status_code in _FALL_STATUS and not isinstance(response, RelayResponse)
