"""The FastAPI app: OpenAI-compatible routes, health and version, API-key check."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import corral
from corral.server.async_engine import AsyncEngine
from corral.server.chat import create_chat_completion
from corral.server.completions import create_completion, prompts_of
from corral.server.errors import APIError, error_response, install_error_handlers
from corral.server.limits import BodySizeLimit, RequestLimits, check_request
from corral.server.metrics import EngineMetrics
from corral.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from corral.server.streams import ClientGone
from corral.server.tokenize import DetokenizeRequest, TokenizeRequest, detokenize, tokenize, tokenizer_info

# The event loop and HTTP parser `corral serve` runs on: uvloop and httptools leave the engine more of the 2
# cores than asyncio and h11 (32 streams +11% in 6 of 6 alternating pairs; one stream within noise:
# docs/performance.md, "The served path"). Tests start the app with these.
UVICORN_OPTIONS = {"loop": "uvloop", "http": "httptools"}


def build_app(
    engine: AsyncEngine,
    served_model_name: str,
    api_key: str | None = None,
    max_tokens_cap: int | None = None,
    metrics: EngineMetrics | None = None,
    max_waiting: int | None = None,
    limits: RequestLimits | None = None,
) -> FastAPI:
    """``max_tokens_cap`` bounds every request's max_tokens (None: up to the context); ``metrics`` is
    the registry behind /metrics (the engine's observer); past ``max_waiting`` queued requests, new
    ones get 429 with Retry-After; ``limits`` bound what one request may ask for (RequestLimits' defaults)."""
    limits = limits or RequestLimits()
    app = FastAPI(title="corral", version=corral.__version__)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    install_error_handlers(app)

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    def admit() -> None:
        if max_waiting is not None and engine.num_waiting >= max_waiting:
            raise APIError(429, f"server overloaded: {engine.num_waiting} requests are waiting; retry later",
                           code="overloaded")

    def check_fields(body: CompletionRequest | ChatCompletionRequest) -> None:
        refused = body.refused_field()
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0])

    def check_model(name: str) -> None:
        if name != served_model_name:
            raise APIError(404, f"the model {name!r} does not exist (this server serves {served_model_name!r})",
                           param="model", code="model_not_found")

    def cap(requested: int | None) -> int | None:
        if requested is not None and max_tokens_cap is not None and requested > max_tokens_cap:
            raise APIError(400, f"max_tokens {requested} exceeds this server's cap of {max_tokens_cap}",
                           param="max_tokens")
        return requested if requested is not None else max_tokens_cap

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.is_healthy():
            return JSONResponse({"status": "ok"})
        return error_response(503, "the engine loop is not running")

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if metrics is None:
            return error_response(404, "metrics are not enabled")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> dict:
        return {"version": corral.__version__}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served_model_name, max_model_len=engine.engine.max_model_len)])

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, http: Request):
        check_fields(body)
        check_model(body.model)
        check_request(len(prompts_of(body)), body.n, num_stop_strings(body), len(body.bad_words or ()), limits)
        admit()
        return await create_completion(engine, body, served_model_name, cap(body.max_tokens), client_gone(http))

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        check_fields(body)
        check_model(body.model)
        check_request(1, body.n, num_stop_strings(body), len(body.bad_words or ()), limits)
        admit()
        return await create_chat_completion(
            engine, body, served_model_name, cap(body.max_completion_tokens or body.max_tokens), client_gone(http)
        )

    @app.post("/tokenize", dependencies=[Depends(check_key)])
    async def tokenize_route(body: TokenizeRequest) -> dict:
        if body.model is not None:
            check_model(body.model)
        return await asyncio.to_thread(tokenize, body, engine.engine.tokenizer, engine.engine.max_model_len)

    @app.post("/detokenize", dependencies=[Depends(check_key)])
    async def detokenize_route(body: DetokenizeRequest) -> dict:
        if body.model is not None:
            check_model(body.model)
        return detokenize(body, engine.engine.tokenizer)

    @app.get("/tokenizer_info", dependencies=[Depends(check_key)])
    async def tokenizer_info_route() -> dict:
        return tokenizer_info(engine.engine.tokenizer, engine.engine.max_model_len)

    return app


def num_stop_strings(body: CompletionRequest | ChatCompletionRequest) -> int:
    return 1 if isinstance(body.stop, str) else len(body.stop or ())


def client_gone(http: Request) -> ClientGone:
    """Waits for the client's disconnect. The body is read by then, so the next ASGI message is the
    disconnect; streamed responses need no such wait (Starlette cancels them when the client goes)."""

    async def wait() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    return wait
