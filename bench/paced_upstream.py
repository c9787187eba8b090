"""A paced OpenAI-compatible upstream for measuring the gateway's own relay cost (bench/gateway_bench.py's
`relay` part): streaming /v1/completions whose first token comes ``--ttft-ms`` after the request and each
next one ``--tpot-ms`` later, on a fixed schedule, with no model behind it. Measured straight and through the
gateway, the difference is the gateway's alone, without an engine's run-to-run noise. A benchmark instrument,
not a server: every completion is the word " tok" repeated ``max_tokens`` times.

    python bench/paced_upstream.py --port 8001 [--ttft-ms 50] [--tpot-ms 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def build_app(ttft_s: float, tpot_s: float) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(http: Request):
        body = await http.json()
        model, max_tokens = body.get("model", "m"), int(body.get("max_tokens") or 16)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> str:
            data = {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n"

        if not body.get("stream"):
            await asyncio.sleep(ttft_s + tpot_s * (max_tokens - 1))
            return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model,
                                 "choices": [{"index": 0, "text": " tok" * max_tokens, "logprobs": None,
                                              "finish_reason": "length"}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": max_tokens,
                                           "total_tokens": 1 + max_tokens}})

        async def events():
            start = time.perf_counter()
            for i in range(max_tokens):
                due = start + ttft_s + i * tpot_s  # a fixed schedule: a late token does not delay the next
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                yield chunk(" tok", "length" if i == max_tokens - 1 else None)
            usage = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                     "usage": {"prompt_tokens": 1, "completion_tokens": max_tokens, "total_tokens": 1 + max_tokens}}
            yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tpot-ms", type=float, default=30.0)
    args = parser.parse_args()
    app = build_app(args.ttft_ms / 1000, args.tpot_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
