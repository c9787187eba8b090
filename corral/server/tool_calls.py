"""Tool calling, the output side: a model's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
become OpenAI's ``tool_calls``, and the text around them its ``content``.

One parser serves both shapes of response: streamed, it turns text deltas into chat deltas as OpenAI streams them
(a call's id, type and name once, then fragments of its arguments text); whole, it is the same parser fed the
whole text at once, so a streamed answer always adds up to the non-streamed one.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.server.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# The head of a call that names its function before its arguments (the order the grammar writes), after which
# the arguments stream as they are generated.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class _OpenCall:
    start: int  # where its body (the JSON) begins in the text
    index: int
    call: ToolCall | None = None  # once its name is out
    arguments_start: int = 0
    sent: int = 0  # characters of its arguments already out


@dataclass
class ToolCallParser:
    """Feed a choice's text as it grows (``feed``), then ``finish``; each returns chat ``delta`` objects.

    Content is the text outside calls, less the whitespace that only separates it from a call (trailing
    whitespace waits for what follows it; none opens content that follows a call). A call's arguments stream as they grow once its name is known;
    a block that turns out not to be a call is given back as content; a call cut short keeps what was sent.
    """

    text: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    _position: int = 0  # the text before it has been dealt with
    _open: _OpenCall | None = None

    def feed(self, delta: str) -> list[dict[str, Any]]:
        self.text += delta
        return self._advance(final=False)

    def finish(self) -> list[dict[str, Any]]:
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        while True:
            if self._open is None:
                if self.calls and not self.content:  # the text after a first call starts at a non-space
                    rest = self.text[self._position :]
                    self._position += len(rest) - len(rest.lstrip())
                opening = self.text.find(TOOL_CALL_OPEN, self._position)
                end = opening if opening >= 0 else len(self.text) if final else _safe_end(self.text, TOOL_CALL_OPEN)
                self._content(self.text[self._position : end].rstrip(), deltas)
                if opening < 0:
                    return deltas
                self._position = opening + len(TOOL_CALL_OPEN)
                self._open = _OpenCall(start=self._position, index=len(self.calls))
                continue
            closing = self.text.find(TOOL_CALL_CLOSE, self._open.start)
            if closing < 0 and not final:
                self._stream_arguments(_safe_end(self.text, TOOL_CALL_CLOSE), deltas)
                return deltas
            body_end = closing if closing >= 0 else len(self.text)
            self._close(self.text[self._open.start : body_end], closed=closing >= 0, deltas=deltas)
            self._position = body_end + len(TOOL_CALL_CLOSE) if closing >= 0 else len(self.text)
            if closing < 0:
                return deltas

    def _content(self, text: str, deltas: list[dict[str, Any]]) -> None:
        if text:
            self.content += text
            self._position += len(text)
            deltas.append({"content": text})

    def _stream_arguments(self, end: int, deltas: list[dict[str, Any]]) -> None:
        call = self._open
        assert call is not None
        if call.call is None:
            head = _CALL_HEAD.match(self.text, call.start, end)
            if head is None:
                return
            call.call = ToolCall(_new_id(), json.loads(head.group(1)), "")
            call.arguments_start = head.end()
            deltas.append({"tool_calls": [{"index": call.index, **call.call.to_dict()}]})
        written = self.text[call.arguments_start : end]
        if not written or written[0] not in "{[":
            return  # a string or a bare number: sent whole when the call closes
        try:
            _, length = json.JSONDecoder().raw_decode(written)
            written = written[:length]  # complete: what follows closes the call
        except json.JSONDecodeError:
            pass  # incomplete, so every character so far belongs to the arguments
        self._send_arguments(call, written, deltas)

    @staticmethod
    def _send_arguments(call: _OpenCall, arguments: str, deltas: list[dict[str, Any]]) -> None:
        assert call.call is not None
        if len(arguments) > call.sent and arguments.startswith(call.call.arguments):
            deltas.append({"tool_calls": [{"index": call.index, "function": {"arguments": arguments[call.sent :]}}]})
            call.sent = len(arguments)
            call.call.arguments = arguments

    def _close(self, body: str, closed: bool, deltas: list[dict[str, Any]]) -> None:
        call, self._open = self._open, None
        assert call is not None
        parsed = _parse_call(body)
        if parsed is None and call.call is None:  # never a call: give the block back as text
            self._position = call.start - len(TOOL_CALL_OPEN)
            self._content((TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if closed else "")).rstrip(), deltas)
            return
        if parsed is not None:
            name, arguments = parsed
            if call.call is None:
                call.call = ToolCall(_new_id(), name, "")
                deltas.append({"tool_calls": [{"index": call.index, **call.call.to_dict()}]})
            self._send_arguments(call, arguments, deltas)
        assert call.call is not None  # a call cut short (max_tokens) keeps the arguments it sent
        self.calls.append(call.call)


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content or None, calls) of a whole response."""
    parser = ToolCallParser()
    parser.feed(text)
    parser.finish()
    return parser.content or None, parser.calls


def _parse_call(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a call's body, or None if it is not one."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return value["name"], arguments
    head = _CALL_HEAD.match(body)
    if head is not None:  # keep the model's own text of the arguments (what streaming sent)
        written = body[head.end() :]
        try:
            _, length = json.JSONDecoder().raw_decode(written)
            return value["name"], written[:length]
        except json.JSONDecodeError:
            pass
    return value["name"], json.dumps(arguments, separators=(",", ":"))


def _safe_end(text: str, tag: str) -> int:
    """Where text may be given out up to: before a tail that could be the start of ``tag``."""
    for keep in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:keep]):
            return len(text) - keep
    return len(text)


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
