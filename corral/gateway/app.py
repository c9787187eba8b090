"""The gateway's HTTP face: OpenAI routes relayed to model groups, ``/health``, ``/metrics``,
``/gateway/status`` and the admin API (admin.py); the lifespan starts and stops local replicas and the health and
metrics monitor. With auth enabled, every ``/v1`` route needs a tenant's key (auth.py); each request then passes its
tenant's limits and is recorded in the audit log (ledger.py). ``POST /admin/reload`` and SIGHUP reload the config
file's reloadable keys (reloader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.gateway import cache_path
from corral.gateway.admin import add_admin_routes
from corral.gateway.admin_audit import KeyEventAuditor
from corral.gateway.auth import Authenticator, Tenant
from corral.gateway.autoscale.local import LocalScaler
from corral.gateway.backends import Backend, Group, Monitor
from corral.gateway.cache import GatewayCache
from corral.gateway.config import ConfigFile, GatewayConfig, GatewayConfigError
from corral.gateway.errors import GatewayError, error_response
from corral.gateway.fallback import Fallbacks, on_premises_reachable
from corral.gateway.guard_path import GatewayGuardrails
from corral.gateway.key_store import KeyStoreError, SQLiteKeyStore
from corral.gateway.ledger import CACHE_ROUTE, Ledger
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.relay import Forwarder, RequestContext
from corral.gateway.reloader import ConfigReloader
from corral.gateway.routing import RouteRequest, prompt_text
from corral.gateway.supervisor import ReplicaSupervisor
from corral.gateway.tenants import request_priority
from corral.gateway.token_limits import clamp_max_tokens, prompt_error, prompt_too_long
from corral.gateway.usage import ask_for_usage

logger = logging.getLogger("corral.gateway")


# The gateway's event loop and HTTP parser: a relay is mostly their work (a streamed request's first event through
# the gateway, back to back: 3.35 ms on asyncio and h11, 2.44 ms on these). Its tests start the app with these too.
UVICORN_OPTIONS = {"loop": "uvloop", "http": "httptools"}
RELAYED_PATHS = ("/v1/completions", "/v1/chat/completions")


class Gateway:
    """The groups, their backends and the tasks that keep them: one per gateway process. ``admin_key``: the
    admin API's key (the CLI reads it from ``auth.admin_key_env``); None refuses the admin API. ``audit_key``: the
    audit log's HMAC key (the CLI reads it from ``audit.hmac_key_env``), needed when audit is enabled.
    ``config_file``: the file ``config`` was read from, which a reload reads again (None: nothing to reload)."""

    def __init__(self, config: GatewayConfig, replica_log_level: str = "warning", admin_key: str | None = None,
                 audit_key: bytes | None = None, config_file: ConfigFile | None = None):
        self.config = config
        self.metrics = GatewayMetrics()
        self.auth = None
        if config.auth.enabled:
            try:
                store = SQLiteKeyStore(config.auth.store)
            except KeyStoreError as error:
                raise GatewayConfigError(f"auth.store: {error}") from None
            self.auth = Authenticator(config.auth, store, admin_key, self.metrics)
        self.ledger = Ledger.from_config(config, audit_key, self.metrics)
        self.guardrails = GatewayGuardrails.from_config(config, self.metrics)
        self.key_events: KeyEventAuditor | None = None
        self.groups = {name: Group.from_config(name, group, self.metrics) for name, group in config.groups.items()}
        self.replica_log_level = replica_log_level
        self.created = int(time.time())
        self.client: httpx.AsyncClient | None = None  # health checks, metrics scrapes, replica start-up
        self.upstream: aiohttp.ClientSession | None = None  # the relay (relay.py says why aiohttp)
        self.forwarder: Forwarder | None = None
        self.supervisors: list[ReplicaSupervisor] = []
        self.monitor: Monitor | None = None
        self.scalers: dict[str, LocalScaler] = {}  # the autoscaled groups' controllers (autoscale/local.py)
        self.fallbacks: Fallbacks | None = None
        self.cache = GatewayCache(config.cache) if config.cache.enabled else None
        if self.cache is not None:
            self.metrics.registry.register(cache_path.CacheCollector(self.cache))
        self.reloader = ConfigReloader(self, config_file)

    def apply_config(self, config: GatewayConfig, guardrails: GatewayGuardrails | None) -> None:
        """Swaps in a reloaded config (its reloadable keys: reload.py), all at once: no await, so no request sees
        half of it. A request reads its tenant and policy when it arrives, and keeps them to its end."""
        self.config = config
        if self.auth is not None:
            self.auth.config = config.auth
        self.guardrails = guardrails
        self.ledger.reconfigure(config)

    async def start(self) -> None:
        await self.ledger.start()
        if self.auth is not None and self.ledger.audit is not None:
            self.key_events = KeyEventAuditor(self.auth.store, self.ledger.audit)
            await self.key_events.start()
        # No pool bound: concurrency is bounded by the clients and the replicas' own admission.
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        # No pool bound either; bodies are relayed as they are (no decompression).
        self.upstream = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                              auto_decompress=False)
        self.forwarder = Forwarder(self.upstream, self.metrics)
        self.fallbacks = Fallbacks(self.groups, self.forwarder, self.metrics, self.scalers)
        for group in self.groups.values():
            for backend in group.backends:
                if backend.local:
                    supervisor = ReplicaSupervisor(group, backend, self.client, self.replica_log_level)
                    supervisor.start()
                    self.supervisors.append(supervisor)
        self.monitor = Monitor(list(self.groups.values()), self.client)
        self.monitor.start()
        for group in self.groups.values():
            if group.config.autoscaling is not None:
                self.scalers[group.name] = LocalScaler(group, self.metrics, self.spawn_replica, self.monitor)
                self.scalers[group.name].start()

    def spawn_replica(self, group: Group, backend: Backend) -> ReplicaSupervisor:
        return ReplicaSupervisor(group, backend, self.client, self.replica_log_level)

    async def stop(self) -> None:
        for scaler in self.scalers.values():
            await scaler.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        for supervisor in self.supervisors:
            await supervisor.stop()
        if self.client is not None:
            await self.client.aclose()
        if self.upstream is not None:
            await self.upstream.close()
        if self.cache is not None:
            await self.cache.close()
        if self.key_events is not None:
            await self.key_events.stop()
        await self.ledger.stop()
        if self.auth is not None:
            self.auth.store.close()

    def authenticate(self, http: Request) -> Tenant | None:
        """The request's tenant (a 401 for a bad key); None when auth is off."""
        return None if self.auth is None else self.auth.tenant(http.headers)

    def model_names(self, tenant: Tenant | None) -> list[str]:
        """The groups ``tenant`` may use (and, ``local_only``, reach)."""
        if tenant is None:
            return list(self.groups)
        return [name for name in self.groups if tenant.config.allows(name)
                and (not tenant.config.local_only or on_premises_reachable(self.groups, name))]

    async def audit_key_events(self) -> None:
        """Copies the key store's pending admin events into the audit log (admin_audit.py)."""
        if self.key_events is not None:
            await self.key_events.copy()

    async def context(self, http: Request, path: str, request_id: str, tenant: Tenant | None) -> RequestContext:
        """Parses and checks what the gateway itself needs of a request from ``tenant`` (authenticated before the
        body is read: no work for an unknown caller): JSON, a known model its tenant may use, a time limit."""
        guardrails = self.guardrails  # the policies of the config its tenant was read from (a reload may follow)
        try:
            body = json.loads(await read_body(http, self.config.max_body_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise GatewayError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if not isinstance(model, str):
            raise GatewayError(400, "`model` is required and must be a string", param="model")
        group = self.groups.get(model)
        if group is None:
            raise GatewayError(404, f"the model {model!r} does not exist (this gateway serves "
                                    f"{', '.join(map(repr, self.model_names(tenant)))})", param="model",
                               code="model_not_found")
        if tenant is not None:
            self.auth.check_group(tenant, group.name)
            if tenant.config.local_only and not on_premises_reachable(self.groups, group.name):
                raise GatewayError(403, f"tenant {tenant.name!r} is local_only and no backend of model "
                                        f"{group.name!r} (or its fallbacks) is on premises", param="model",
                                   code="local_only")
        arrival = time.monotonic()
        limit_s = group.config.timeouts.request_s
        header = http.headers.get("x-request-timeout")
        if header is not None:
            try:
                requested = float(header)
            except ValueError:
                requested = -1.0
            if not requested > 0:
                raise GatewayError(400, f"x-request-timeout must be a positive number of seconds, got {header!r}")
            limit_s = min(limit_s, requested)
        route = RouteRequest(prompt_text(body), http.headers.get(group.config.routing.session_header))
        return RequestContext(http, path, body, group, request_id, arrival, arrival + limit_s,
                              stream=body.get("stream") is True, route=route,
                              tenant=tenant and tenant.name, tenant_config=tenant and tenant.config,
                              key_id=tenant and tenant.key_id, priority=request_priority(body, tenant and tenant.config),
                              guard=guardrails and guardrails.for_request(tenant and tenant.name, group.name))

    async def dispatch(self, ctx: RequestContext) -> Response:
        """Answers a checked request: its content policy's input checks (guard_path.py), its prompt limit (a 400,
        or the context-window fallback) and output budget clamp (token_limits), then the response cache (a hit
        answered here; a miss's answer stored once sent; no cache under output checks), then the group's backends
        and, when they cannot answer, its fallbacks (fallback.py), and the output checks on their answer."""
        config, guard = ctx.group.config, ctx.guard
        if guard is not None:
            guard.check_request(ctx)
        too_long = prompt_too_long(ctx.body, config)
        if too_long and not config.fallback_allowed:
            raise prompt_error(ctx.body, ctx.group.name, config)
        tenant_cap = ctx.tenant_config.max_tokens_cap if ctx.tenant_config is not None else None
        # Before the plan: the cache key is that of the body forwarded.
        ctx.body = clamp_max_tokens(ctx.body, config, tenant_cap)
        # An answer the output checks rewrote or refused is never stored, nor one served past them.
        cacheable = self.cache is not None and not too_long and (guard is None or not guard.policy.checks_output)
        plan = cache_path.plan(self.cache, ctx) if cacheable else None
        if plan is not None and plan.lookup:
            entry = await self.cache.lookup(plan)
            if entry is not None:
                ctx.trace.route = CACHE_ROUTE
                self.metrics.requests.labels(group=ctx.group.name, backend="", status="200", route="cache").inc()
                return cache_path.hit_response(self.cache, plan, entry, ctx.request_id)
        if ctx.stream and ctx.count_usage:  # after the cache's key, which is the client's body's
            ctx.body = ask_for_usage(ctx.body)
        scaler = self.scalers.get(ctx.group.name)
        if scaler is not None:  # no replica available (scaled to zero, starting, restarting): wait for one
            startup_s = ctx.group.config.replicas.startup_timeout_s
            await scaler.wait_for_replica(min(ctx.deadline, time.monotonic() + startup_s))
        response, answered_by = await self.fallbacks.forward(ctx)
        if guard is not None:
            response = guard.check_response(ctx, response)
        if plan is not None:
            response.headers[cache_path.CACHE_HEADER] = cache_path.header_value(plan, hit=False)
            if answered_by is None:  # never a fallback's answer under the primary's key
                cache_path.store_after(self.cache, plan, response)
        return response

    def health(self) -> dict:
        now = time.monotonic()
        return {"status": "ok", "groups": {name: {"backends": len(group.backends),
                                                  "available": len(group.candidates(now))}
                                           for name, group in self.groups.items()}}

    def status(self) -> dict:
        now = time.monotonic()
        groups = {name: {"policy": group.config.routing.policy,
                         "backends": [backend.status(now) for backend in group.backends]}
                  for name, group in self.groups.items()}
        for name, scaler in self.scalers.items():
            groups[name]["autoscaling"] = scaler.status()
        return {"groups": groups}


async def read_body(http: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 as soon as its Content-Length or the bytes arrived so far pass ``max_bytes``
    (the rest is never read)."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"{int(declared)}", max_bytes)
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(f"at least {size}", max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, max_bytes: int) -> GatewayError:
    return GatewayError(413, f"the request body has {size} bytes, over this gateway's "
                             f"limit of {max_bytes} (max_body_bytes)", code="request_too_large")


def build_app(config: GatewayConfig, replica_log_level: str = "warning", admin_key: str | None = None,
              audit_key: bytes | None = None, config_file: ConfigFile | None = None) -> FastAPI:
    """The FastAPI app over a new Gateway (``app.state.gateway``)."""
    gateway = Gateway(config, replica_log_level, admin_key, audit_key, config_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        if not gateway.reloader.install_signal_handler():
            logger.debug("SIGHUP does not reload the config: the gateway does not run in the main thread")
        try:
            yield
        finally:
            gateway.reloader.remove_signal_handler()
            await gateway.reloader.wait_idle()
            await gateway.stop()

    app = FastAPI(title="corral gateway", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(GatewayError(error.status_code, str(error.detail)))

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        return error_response(error)

    async def relay(http: Request, path: str) -> Response:
        request_id = http.headers.get("x-request-id") or f"gw-{uuid.uuid4().hex}"
        entry = gateway.ledger.open(request_id, path)
        try:
            entry.tenant = gateway.authenticate(http)
            ctx = await gateway.context(http, path, request_id, entry.tenant)
            await entry.admit(ctx)
            response = await gateway.dispatch(ctx)
        except GatewayError as error:
            gateway.metrics.requests.labels(group="", backend="", status=str(error.status), route="").inc()
            await entry.refused(error)
            return error_response(error, headers={"x-request-id": request_id})
        except BaseException:  # a bug, or the server shutting down: the slot is given back all the same
            if entry.tracked:
                await asyncio.shield(entry.close(500, complete=False))
            raise
        response = await entry.answer(response)
        response.headers["x-request-id"] = request_id
        return response

    # Plain Starlette routes, not FastAPI's: the relay parses its own body, and FastAPI's parameter and
    # response handling would cost every relayed request for nothing (docs/gateway.md#benchmarks).
    for path in RELAYED_PATHS:
        app.add_route(path, functools.partial(relay, path=path), methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def models(http: Request) -> dict:
        names = gateway.model_names(gateway.authenticate(http))
        return {"object": "list", "data": [{"id": name, "object": "model", "created": gateway.created,
                                            "owned_by": "corral-gateway"} for name in names]}

    @app.get("/health")
    async def health() -> dict:
        return gateway.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # /health and /metrics stay open (load balancers, Prometheus): /metrics names groups and backends, so it is
    # for an internal network only (docs/gateway.md#tenants-and-api-keys).
    @app.get("/gateway/status")
    async def status(http: Request) -> dict:
        if gateway.auth is not None:
            gateway.auth.check_admin(http.headers)
        return gateway.status()

    add_admin_routes(app, gateway.auth, gateway.audit_key_events if gateway.ledger.audit is not None else None,
                     reload=gateway.reloader.reload)
    return app
