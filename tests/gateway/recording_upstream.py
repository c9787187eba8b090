"""A recording OpenAI-compatible upstream for gateway tests: it keeps every request body it receives and answers
a text the test chooses, streamed in the pieces the test cuts, so the gateway's input and output can both be
observed."""

from __future__ import annotations

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
class RecordingUpstream:
    """Answers ``pieces`` joined (a body) or one event per piece (a stream; ``finish``: whether the last event
    carries a finish_reason), and records each request body it receives."""

    base_url: str = ""
    bodies: list[dict] = field(default_factory=list)
    pieces: list[str] = field(default_factory=lambda: ["Hello."])
    finish: bool = True

    def answer(self, *pieces: str, finish: bool = True) -> None:
        self.pieces, self.finish = list(pieces), finish
        self.bodies.clear()


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
        usage = {"prompt_tokens": 3, "completion_tokens": len(upstream.pieces), "total_tokens": 3 + len(upstream.pieces)}
        if not body.get("stream"):
            text = "".join(upstream.pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                      else {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"})
            return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                                 "choices": [choice], "usage": usage})

        def event(choice: dict) -> str:
            return f"data: {json.dumps({**head, 'choices': [{'index': 0, **choice}]})}\n\n"

        async def events() -> Iterator[str]:
            if chat:
                yield event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            for i, piece in enumerate(upstream.pieces):
                last = upstream.finish and i == len(upstream.pieces) - 1 and not chat
                yield event({"text": piece, "logprobs": None, "finish_reason": "stop" if last else None} if not chat
                            else {"delta": {"content": piece}, "finish_reason": None})
            if chat and upstream.finish:
                yield event({"delta": {}, "finish_reason": "stop"})
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
