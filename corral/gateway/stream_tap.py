"""Between a relayed SSE stream and its client (relay.RelayResponse): events are passed on whole as they complete,
the usage is read (and its chunk dropped when the gateway asked for it on the client's behalf), and the upstream's
``data: [DONE]`` is held back until the request's bookkeeping is settled: its audit record written and its
limits charged and released (ledger.py). So a client that has read ``[DONE]`` has a record, and its next request
finds its slot free and its tokens counted. With a content policy's output checks (guard_stream.py), every event
is parsed and rewritten with what the checks let out; a denial ends the answer with an error event."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral.gateway.errors import error_data_event, error_event
from corral.gateway.usage import Answer

if TYPE_CHECKING:
    from corral.gateway.guard_stream import StreamGuard

# Events end at a blank line; servers write "\n\n", the SSE spec allows "\r\n" too.
_EVENT_END = re.compile(rb"\r?\n\r?\n")

# settle(status, answer, complete): writes the record and charges the limits once (further calls return the
# same result); the answer is an error message when the record could not be written, else None.
Settle = Callable[[int, Answer, bool], Awaitable[str | None]]


def _payload(event: bytes) -> bytes:
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


class StreamTap:
    """One stream's tap. ``parse_all``: parse every event (the audit hashes the output); otherwise only those
    that carry a usage. ``strip_usage``: the client did not ask for usage, the gateway did. ``guard``: the output
    checks, which see every event (the answer recorded is then the one the client got)."""

    def __init__(self, settle: Settle, parse_all: bool, strip_usage: bool, guard: StreamGuard | None = None):
        self.settle = settle
        self.parse_all = parse_all
        self.strip_usage = strip_usage
        self.guard = guard
        self.status = 200  # the status settled at [DONE]: the error event's when the guard refused the answer
        self.answer = Answer()
        self.done = False  # the upstream's [DONE] has arrived (or the guard refused), and is held back
        self._held = b""
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay now: the events completed so far, less a usage chunk the client did not ask for and
        less ``[DONE]``; an event's first part waits for its end."""
        data = self._buffer + chunk if self._buffer else chunk
        out, start = [], 0
        for end in _EVENT_END.finditer(data):
            if self.done:  # nothing of an answer goes out after its [DONE], or after a refusal
                break
            kept = self._event(data[start:end.end()])
            start = end.end()
            if kept:
                out.append(kept)
        self._buffer = b"" if self.done else data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left at the upstream's end: the bytes of an event it never finished."""
        rest, self._buffer = self._buffer, b""
        return rest

    async def finish(self) -> bytes:
        """Settles the request as complete, then answers the held ``[DONE]`` (or an error event when the audit
        record could not be written). Shielded: a client leaving meanwhile does not interrupt the bookkeeping."""
        if self.guard is not None:
            self.guard.close()
        problem = await asyncio.shield(self.settle(self.status, self.answer, True))
        if problem is not None:
            return error_event(503, problem, code="audit_unavailable")
        return self._held

    async def close(self, status: int) -> None:
        """At the relay's end, whatever it was: settles the request as incomplete unless ``finish`` did."""
        if self.guard is not None:
            self.guard.close()
        await self.settle(status, self.answer, False)

    def _event(self, event: bytes) -> bytes:
        payload = _payload(event)
        if payload.strip() == b"[DONE]":
            self.done, self._held = True, event
            return b"" if self.guard is None else self._guarded(self.guard.finish_all())
        if self.guard is None and not self.parse_all and b'"usage"' not in payload:
            self.answer.events += 1
            return event
        try:
            chunk = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            # A comment or keep-alive carries no answer; other data the output checks cannot read is not sent.
            return event if self.guard is None or not payload.strip() else b""
        if self.guard is not None:
            return self._guarded(self.guard.rewrite(chunk))
        return self._kept(chunk, event)

    def _kept(self, chunk: Any, event: bytes | None) -> bytes:
        """``chunk`` recorded and sent (``event``: its bytes as they came, None when it was rewritten)."""
        self.answer.add_chunk(chunk)
        if self.strip_usage and isinstance(chunk, dict) and chunk.get("usage") is not None:
            if not chunk.get("choices"):
                return b""  # the usage chunk the gateway asked for
            chunk.pop("usage")
            event = None
        return event if event is not None else b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _guarded(self, chunks: list[Any]) -> bytes:
        out = b"".join(self._kept(chunk, None) for chunk in chunks)
        error = self.guard.error
        if error is not None and self.status == 200:
            self.done, self._held, self.status = True, b"data: [DONE]\n\n", error.status
            out += error_data_event(error.status, error.message, error.code)
        return out
