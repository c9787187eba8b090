"""Bounded work per request (OWASP LLM10, "unbounded consumption", at the replica): a body size limit
enforced while the body arrives, and limits on what one request may ask for, each refused with an error
that names the limit before any tokenizing or engine work."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.server.api_error import APIError, error_body
from corral.server.limits_config import RequestLimits

__all__ = ["BodySizeLimit", "RequestLimits", "check_request"]


def check_request(num_prompts: int, n: int, num_stop_strings: int, num_bad_words: int, limits: RequestLimits) -> None:
    """A 400 naming the field (code ``limit_exceeded``) for the first limit the request goes past."""
    if num_prompts > limits.max_prompts:
        _refuse(f"{num_prompts} prompts in one request; this server allows {limits.max_prompts}"
                " (--max-prompts-per-request)", "prompt")
    if num_prompts * n > limits.max_sequences:
        _refuse(f"{num_prompts} prompts x n={n} = {num_prompts * n} sequences; this server allows"
                f" {limits.max_sequences} per request (--max-sequences-per-request)", "n")
    if num_stop_strings > limits.max_stop_strings:
        _refuse(f"{num_stop_strings} stop strings; this server allows {limits.max_stop_strings} (--max-stop-strings)",
                "stop")
    if num_bad_words > limits.max_stop_strings:
        _refuse(f"{num_bad_words} bad words; this server allows {limits.max_stop_strings} (--max-stop-strings bounds"
                " both)", "bad_words")


def _refuse(message: str, param: str) -> None:
    raise APIError(400, message, param=param, code="limit_exceeded")


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 as soon as its Content-Length says so or, when the
    length is not declared (chunked), as soon as that many bytes have arrived; the rest is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the route's body read: answered as a 413
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes} bytes (--max-request-bytes)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(413, self._message(), code="request_too_large")
        await JSONResponse(body, status_code=413)(scope, receive, send)
