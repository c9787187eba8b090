"""Between a relayed SSE stream and its client (relay.RelayResponse): events are passed on whole as they complete,
the usage is read (and its chunk dropped when the gateway asked for it on the client's behalf), and the upstream's
``data: [DONE]`` is held back until the request's bookkeeping is settled: its audit record written and its
limits charged and released (ledger.py). So a client that has read ``[DONE]`` has a record, and its next request
finds its slot free and its tokens counted."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

from corral.gateway.errors import error_event
from corral.gateway.usage import Answer

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
    that carry a usage. ``strip_usage``: the client did not ask for usage, the gateway did."""

    def __init__(self, settle: Settle, parse_all: bool, strip_usage: bool):
        self.settle = settle
        self.parse_all = parse_all
        self.strip_usage = strip_usage
        self.answer = Answer()
        self.done = False  # the upstream's [DONE] has arrived, and is held back
        self._held = b""
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay now: the events completed so far, less a usage chunk the client did not ask for and
        less ``[DONE]``; an event's first part waits for its end."""
        data = self._buffer + chunk if self._buffer else chunk
        out, start = [], 0
        for end in _EVENT_END.finditer(data):
            kept = self._event(data[start:end.end()])
            start = end.end()
            if kept:
                out.append(kept)
        self._buffer = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left at the upstream's end: the bytes of an event it never finished."""
        rest, self._buffer = self._buffer, b""
        return rest

    async def finish(self) -> bytes:
        """Settles the request as complete, then answers the held ``[DONE]`` (or an error event when the audit
        record could not be written). Shielded: a client leaving meanwhile does not interrupt the bookkeeping."""
        problem = await asyncio.shield(self.settle(200, self.answer, True))
        if problem is not None:
            return error_event(503, problem, code="audit_unavailable")
        return self._held

    async def close(self, status: int) -> None:
        """At the relay's end, whatever it was: settles the request as incomplete unless ``finish`` did."""
        await self.settle(status, self.answer, False)

    def _event(self, event: bytes) -> bytes:
        payload = _payload(event)
        if payload.strip() == b"[DONE]":
            self.done, self._held = True, event
            return b""
        if not self.parse_all and b'"usage"' not in payload:
            self.answer.events += 1
            return event
        try:
            chunk = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return event
        self.answer.add_chunk(chunk)
        if self.strip_usage and isinstance(chunk, dict) and chunk.get("usage") is not None:
            if not chunk.get("choices"):
                return b""  # the usage chunk the gateway asked for
            chunk.pop("usage")
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"
        return event
