"""The error the server answers with directly, and OpenAI's error body: ``{"error": {"message", "type", "param",
"code"}}``. A module of its own so that middleware below the app (``limits.py``) shares it with the routes."""

from __future__ import annotations

from http import HTTPStatus

_TYPES = {400: "invalid_request_error", 413: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          429: "rate_limit_error", 500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error the server answers with directly (bad key, unknown model, a limit, ...)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param,
                      "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_")}}
