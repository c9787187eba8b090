"""What the gateway keeps of each request on its path: its admission under its tenant's limits (limits.py) and
its audit record (audit.py). ``RequestEntry.close`` settles both exactly once, whatever way the request ends (an
answer, a stream's ``[DONE]``, an error, a client gone, a time limit, a fallback, a cache hit), and before the
answer's last byte whenever the answer is whole: the record is written (``append_and_wait``) and the tokens are
charged and the request's place in flight given back, so a client that has its answer has its record, and its
next request sees its slot free and its tokens counted (docs/gateway.md#rate-limits-and-budgets, docs/audit.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastapi.responses import Response

from corral.gateway.audit import AuditConfig, AuditLog, request_event
from corral.gateway.auth import Tenant
from corral.gateway.config import GatewayConfig, GatewayConfigError
from corral.gateway.errors import GatewayError, error_response
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.relay import RelayResponse, RequestContext
from corral.gateway.stream_tap import StreamTap
from corral.gateway.tenants import TenantLimits
from corral.gateway.usage import Answer, answer_of_body, asked_for_usage, estimated_prompt_tokens, prompt_of

if TYPE_CHECKING:  # limits.py imports the limits library: only a gateway with limited tenants pays for it
    from corral.gateway.limits import Admission, TenantLimiter

logger = logging.getLogger("corral.gateway")

CACHE_ROUTE = "cache"


def has_limits(limits: TenantLimits) -> bool:
    return bool(limits.model_dump(exclude_none=True))


def counts_tokens(limits: TenantLimits) -> bool:
    return any(value is not None for value in (limits.tokens_per_minute, limits.tokens_per_day,
                                               limits.tokens_per_month))


class Ledger:
    """The limiter (None when no tenant has limits) and the audit log (None when audit is off) of one gateway."""

    def __init__(self, limiter: TenantLimiter | None, audit: AuditLog | None, audit_config: AuditConfig,
                 metrics: GatewayMetrics):
        self.limiter, self.audit, self.audit_config, self.metrics = limiter, audit, audit_config, metrics

    @classmethod
    def from_config(cls, config: GatewayConfig, audit_key: bytes | None, metrics: GatewayMetrics) -> Ledger:
        audit = None
        if config.audit.enabled:
            if audit_key is None:
                raise GatewayConfigError(f"audit: enabled, but no key was given (corral gateway reads it from "
                                         f"${config.audit.hmac_key_env})")
            audit = AuditLog(config.audit, audit_key)
        ledger = cls(None, audit, config.audit, metrics)
        ledger.reconfigure(config)
        return ledger

    def reconfigure(self, config: GatewayConfig) -> None:
        """Takes a (re)loaded config's audit texts default, and makes the limiter once a tenant has limits. The
        tenants' limits are not kept here: each request brings its tenant's, and the windows are the tenant's
        whatever its limit (limits.py), so a changed limit applies to the requests of the last minute too."""
        self.audit_config = config.audit
        if self.limiter is None and config.auth.enabled and any(has_limits(t.limits)
                                                                for t in config.auth.tenants.values()):
            from corral.gateway.limits import TenantLimiter

            metrics = self.metrics
            self.limiter = TenantLimiter(config.limits, on_reject=lambda tenant, limit:
                                         metrics.limit_rejections.labels(limit=limit).inc())

    async def start(self) -> None:
        if self.audit is not None:
            await self.audit.start()

    async def stop(self) -> None:
        """After the last request: the audit queue drained and synced, the limits' store closed."""
        if self.audit is not None:
            await self.audit.stop()
        if self.limiter is not None:
            await self.limiter.close()

    def open(self, request_id: str, path: str) -> RequestEntry:
        return RequestEntry(self, request_id, path)


class RequestEntry:
    """One request's bookkeeping, from its arrival (``open``) to ``close``."""

    def __init__(self, ledger: Ledger, request_id: str, path: str):
        self.ledger, self.request_id, self.path = ledger, request_id, path
        self.audit_config = ledger.audit_config  # the config's at the request's arrival, a reload notwithstanding
        self.started = time.monotonic()
        self.tenant: Tenant | None = None
        self.ctx: RequestContext | None = None
        self.admission: Admission | None = None
        self.estimated_prompt_tokens = 0
        self.error_code: str | None = None  # the gateway's own error, when it answered with one
        self.client_asked_usage = False  # before the gateway asks for it on the client's behalf (usage.py)
        self._closing: asyncio.Task[str | None] | None = None

    async def admit(self, ctx: RequestContext) -> None:
        """Lets the checked request through its tenant's limits, or raises (429 LimitExceeded; 503 while the
        audit log or, without fail_open, the limits' store is down)."""
        self.ctx = ctx
        ledger = self.ledger
        if ledger.audit is not None and ledger.audit.error is not None:
            raise GatewayError(503, f"the audit log is down ({ledger.audit.error}); requests are refused rather "
                                    "than served unrecorded", code="audit_unavailable")
        limits = ctx.tenant_config.limits if ctx.tenant_config is not None else None
        if ledger.limiter is not None and ctx.tenant is not None and limits is not None and has_limits(limits):
            self.estimated_prompt_tokens = estimated_prompt_tokens(ctx.body)
            self.admission = await ledger.limiter.admit(ctx.tenant, limits, self.estimated_prompt_tokens)
            ctx.count_usage = counts_tokens(limits)
        ctx.count_usage = ctx.count_usage or ledger.audit is not None
        self.client_asked_usage = asked_for_usage(ctx.body)

    @property
    def tracked(self) -> bool:
        """Whether there is anything to settle: a place under limits, or a record to write."""
        return self.admission is not None or self.ledger.audit is not None

    async def answer(self, response: Response) -> Response:
        """The response to send: a stream gets a tap that settles the entry before its ``[DONE]``; a body is
        settled now (a 503 instead when its audit record cannot be written)."""
        stream_guard = response.stream_guard if isinstance(response, RelayResponse) else None
        if not self.tracked and stream_guard is None:
            return response
        if isinstance(response, RelayResponse):
            response.tap = StreamTap(self.close, parse_all=self.ledger.audit is not None,
                                     strip_usage=not self.client_asked_usage, guard=stream_guard)
            return response
        counted = self.ctx is not None and self.ctx.count_usage and response.status_code < 400
        answer = _answer_of(response) if counted else Answer()
        problem = await asyncio.shield(self.close(response.status_code, answer, response.status_code != 499))
        if problem is not None:
            return error_response(GatewayError(503, problem, code="audit_unavailable"),
                                  headers={"x-request-id": self.request_id})
        return response

    async def refused(self, error: GatewayError) -> None:
        """Settles a request the gateway answered with its own error (auth, limits, no backend, time limit)."""
        if self.tracked:
            self.error_code = error.code
            await asyncio.shield(self.close(error.status))

    def close(self, status: int, answer: Answer | None = None, complete: bool = True) -> asyncio.Task[str | None]:
        """Settles the entry once (later calls return the same task): charges the tokens and frees the slot,
        writes the audit record. The task's result is why the record could not be written, or None."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._settle(status, answer or Answer(), complete))
        return self._closing

    async def _settle(self, status: int, answer: Answer, complete: bool) -> str | None:
        ledger, steps = self.ledger, []
        if self.admission is not None:
            cached = self.ctx is not None and self.ctx.trace.route == CACHE_ROUTE
            # A cache hit cost no backend any token; otherwise the backend's usage, or the estimate.
            prompt, completion = (0, 0) if cached else answer.tokens_used(self.estimated_prompt_tokens)
            steps.append(self.admission.finish(prompt, completion))
        if ledger.audit is not None:
            steps.append(ledger.audit.append_and_wait(self._record(status, answer, complete)))
        results = await asyncio.gather(*steps, return_exceptions=True)
        if ledger.audit is None:
            return None
        written = results[-1]
        if isinstance(written, BaseException):
            logger.error("request %s: its audit record could not be written: %s", self.request_id, written)
            ledger.metrics.audit_failures.inc()
            return f"the audit record of this request could not be written: {written}"
        ledger.metrics.audit_records.labels(complete=str(complete).lower()).inc()
        return None

    def _record(self, status: int, answer: Answer, complete: bool) -> dict:
        ctx, tenant = self.ctx, self.tenant
        trace = ctx.trace if ctx is not None else None
        group = ctx.group.name if ctx is not None else None
        policy = tenant.config.record_texts if tenant is not None else None
        body = ctx.body if ctx is not None else None
        return request_event(
            request_id=self.request_id, tenant=tenant.name if tenant else None,
            key_id=tenant.key_id if tenant else None, model_group=group,
            backend=trace.backend if trace else None, route=trace.route if trace else None, status=status,
            latency_ms=(time.monotonic() - self.started) * 1000, prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens, prompt=prompt_of(body) if body is not None else None,
            output=answer.output, record_texts=self.audit_config.record_texts if policy is None else policy,
            complete=complete, path=self.path, error=self.error_code,
            guardrails=ctx.guard.to_record() if ctx is not None and ctx.guard is not None else None,
            fallback=trace.group if trace is not None and trace.group not in (None, group) else None)


def _answer_of(response: Response) -> Answer:
    """Usage and output of a whole body: JSON, or a cached stream replayed as one SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        tap = StreamTap(_never_settled, parse_all=True, strip_usage=False)
        tap.feed(bytes(response.body))
        return tap.answer
    return answer_of_body(bytes(response.body))


async def _never_settled(status: int, answer: Answer, complete: bool) -> str | None:
    raise AssertionError("a body's tap only parses")
