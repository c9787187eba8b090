"""A recording OpenAI-compatible upstream for gateway tests: it keeps every request body it receives and answers
a text the test chooses, streamed in the pieces the test cuts, so the gateway's input and output can both be
observed. A chat answer may also carry tool calls (their arguments streamed in the fragments the test cuts, as
OpenAI streams them), or the legacy ``function_call``, and several choices (``n > 1``: their events interleaved one
by one). A stream may be held after its first events until the test lets it go (``hold``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.gateway.supervisor import free_port


@dataclass
class ToolCall:
    """One tool call of a chat answer: its arguments are ``fragments`` joined; a stream sends one per event."""

    name: str
    fragments: list[str]
    id: str = "call_1"


@dataclass
class Choice:
    """One choice of an answer: text ``pieces`` (one event each when streamed) and ``tool_calls`` or the legacy
    ``function_call`` (chat only)."""

    pieces: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    function_call: ToolCall | None = None


@dataclass
class RecordingUpstream:
    """Answers its ``choices``: each choice's pieces joined (a body) or one event per piece (a stream; ``finish``:
    whether each choice's last event carries a finish_reason), and records each request body it receives."""

    base_url: str = ""
    bodies: list[dict] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=lambda: [Choice(["Hello."])])
    finish: bool = True
    # A stream's events after the first ``hold_after`` wait (10 s at most) until ``hold`` is set.
    hold: threading.Event | None = None
    hold_after: int = 1

    def answer(self, *pieces: str, finish: bool = True) -> None:
        self.answer_choices(Choice(list(pieces)), finish=finish)

    def answer_choices(self, *choices: Choice, finish: bool = True) -> None:
        """Several choices (interleaved when streamed: one event of each in turn), or one with tool calls."""
        self.choices, self.finish, self.hold = list(choices), finish, None
        self.bodies.clear()


def _body_choice(index: int, choice: Choice, chat: bool) -> dict:
    text = "".join(choice.pieces)
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": "stop"}
    calls = choice.tool_calls or choice.function_call
    message: dict = {"role": "assistant", "content": text if text or not calls else None}
    if choice.tool_calls:
        message["tool_calls"] = [{"id": call.id, "type": "function",
                                  "function": {"name": call.name, "arguments": "".join(call.fragments)}}
                                 for call in choice.tool_calls]
    if choice.function_call:
        call = choice.function_call
        message["function_call"] = {"name": call.name, "arguments": "".join(call.fragments)}
    return {"index": index, "message": message, "finish_reason": _finish_reason(choice)}


def _finish_reason(choice: Choice) -> str:
    return "tool_calls" if choice.tool_calls else "function_call" if choice.function_call else "stop"


def _chat_deltas(choice: Choice, finish: bool) -> list[dict]:
    """A chat choice's stream: a role delta, its pieces, then each tool call (id, type and name with empty
    arguments first, then one fragment per event), then its finish."""
    calls = choice.tool_calls or choice.function_call
    events = [{"delta": {"role": "assistant", "content": None if calls else ""}, "finish_reason": None}]
    events += [{"delta": {"content": piece}, "finish_reason": None} for piece in choice.pieces]
    if choice.function_call:  # the legacy form: its name first, then one fragment per event
        call = choice.function_call
        events.append({"delta": {"function_call": {"name": call.name, "arguments": ""}}, "finish_reason": None})
        events += [{"delta": {"function_call": {"arguments": fragment}}, "finish_reason": None}
                   for fragment in call.fragments]
    for number, call in enumerate(choice.tool_calls):
        events.append({"delta": {"tool_calls": [{"index": number, "id": call.id, "type": "function",
                                                 "function": {"name": call.name, "arguments": ""}}]},
                       "finish_reason": None})
        events += [{"delta": {"tool_calls": [{"index": number, "function": {"arguments": fragment}}]},
                    "finish_reason": None} for fragment in call.fragments]
    if finish:
        events.append({"delta": {}, "finish_reason": _finish_reason(choice)})
    return events


def _text_deltas(choice: Choice, finish: bool) -> list[dict]:
    last = len(choice.pieces) - 1
    return [{"text": piece, "logprobs": None, "finish_reason": "stop" if finish and i == last else None}
            for i, piece in enumerate(choice.pieces)]


def _interleaved(upstream: RecordingUpstream, chat: bool) -> list[dict]:
    """Every choice's events, one of each choice in turn (with its ``index``)."""
    streams = [[{"index": index, **event} for event in (_chat_deltas if chat else _text_deltas)(choice, upstream.finish)]
               for index, choice in enumerate(upstream.choices)]
    return [stream[turn] for turn in range(max(map(len, streams), default=0)) for stream in streams
            if turn < len(stream)]


def _upstream_app(upstream: RecordingUpstream) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    async def answer(http: Request, chat: bool):
        body = await http.json()
        upstream.bodies.append(body)
        head = {"id": "up-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1,
                "model": body.get("model")}
        pieces = sum(len(choice.pieces) for choice in upstream.choices)
        usage = {"prompt_tokens": 3, "completion_tokens": pieces, "total_tokens": 3 + pieces}
        if not body.get("stream"):
            choices = [_body_choice(index, choice, chat) for index, choice in enumerate(upstream.choices)]
            return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                                 "choices": choices, "usage": usage})

        async def events() -> Iterator[str]:
            for number, choice in enumerate(_interleaved(upstream, chat)):
                if upstream.hold is not None and number == upstream.hold_after:
                    await asyncio.to_thread(upstream.hold.wait, 10)
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(http: Request):
        return await answer(http, chat=True)

    @app.post("/v1/completions")
    async def completions(http: Request):
        return await answer(http, chat=False)

    return app


@contextlib.contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    """A RecordingUpstream served on a free 127.0.0.1 port, for the duration of the block."""
    recording = RecordingUpstream()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_upstream_app(recording), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    recording.base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the recording upstream did not start"
            time.sleep(0.02)
        yield recording
    finally:
        server.should_exit = True
        thread.join(timeout=10)
