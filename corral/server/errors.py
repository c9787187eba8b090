"""OpenAI-shaped JSON errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import CorralError, ModelLoadError
from corral.server.api_error import APIError, error_body
from corral.server.async_engine import EngineDeadError
from corral.server.streams import ClientDisconnected

logger = logging.getLogger(__name__)

def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def error_payload(status: int, message: str) -> dict:
    """The same shape, for an error that happens mid-stream (sent as one SSE event)."""
    return error_body(status, message, code=status)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, CorralError) and not isinstance(exc, ModelLoadError):
        return 400
    return 500


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        response = error_response(exc.status, exc.message, exc.param, exc.code)
        if exc.status == 429:
            response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            offset = first.get("loc", ("body", "?"))[-1]
            return error_response(400, f"the body is not valid JSON (at character {offset})")
        location = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{location}: {first.get('msg', 'invalid request')}" if location else first.get("msg", "invalid request")
        return error_response(400, message, param=location or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(CorralError)
    async def corral_error(_: Request, exc: CorralError) -> JSONResponse:
        return error_response(status_of(exc), str(exc), exc.param, exc.code)

    @app.exception_handler(ClientDisconnected)
    async def client_disconnected(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the log does

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(500, str(exc), code="engine_dead")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}")
