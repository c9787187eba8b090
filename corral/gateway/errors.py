"""The gateway's own errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, as a JSON
response or as the last event of a stream (the same body ``corral serve`` answers with)."""

from __future__ import annotations

import json
from http import HTTPStatus

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "internal_server_error", 502: "bad_gateway", 503: "service_unavailable",
          504: "timeout_error"}


class GatewayError(Exception):
    """An error the gateway answers with itself (unknown model, bad JSON, no backend available, timeout)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, error_type: str | None = None):
        super().__init__(message)
        self.error_type = error_type  # OpenAI's ``type`` when it is not the status's usual one
        self.headers = headers or {}
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               error_type: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type or _TYPES.get(status, "error"), "param": param,
                      "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_")}}


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, error.param, error.code, error.error_type),
                        status_code=error.status,
                        headers={**error.headers, **(headers or {})})


def error_event(status: int, message: str, code: str | None = None) -> bytes:
    """An SSE error event followed by the end of the stream, for a stream that cannot go on."""
    return error_data_event(status, message, code) + b"data: [DONE]\n\n"


def error_data_event(status: int, message: str, code: str | None = None) -> bytes:
    """The SSE error event alone, for a stream whose ``[DONE]`` is sent later."""
    return f"data: {json.dumps(error_body(status, message, code=code))}\n\n".encode()
