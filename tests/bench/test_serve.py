"""The serving benchmark against a stand-in OpenAI-compatible server (no engine): counts, percentiles,
failures and the JSON report."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.bench.serve import run_benchmark
from corral.bench.stats import Summary


def fake_openai_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if body["model"] != "fake":
            return JSONResponse({"error": {"message": "unknown model"}}, status_code=404)

        async def stream():
            for i in range(body["max_tokens"]):
                await asyncio.sleep(0.002)
                chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
            yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def base_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(fake_openai_app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_reports_every_request_with_concurrency_limit(base_url):
    report = asyncio.run(
        run_benchmark(base_url, "fake", [[1, 2, 3]] * 12, output_len=5, max_concurrency=4, show_progress=False)
    )
    assert report.num_requests == 12 and report.num_failed == 0
    assert report.total_output_tokens == 60
    assert 0 < report.ttft.median_ms <= report.e2e.median_ms
    assert report.itl.p99_ms >= report.itl.median_ms > 0
    assert json.loads(json.dumps(report.to_dict()))["total_output_tokens"] == 60


def test_request_rate_and_failures_are_reported(base_url):
    report = asyncio.run(
        run_benchmark(base_url, "other-model", ["hi"] * 3, output_len=2, request_rate=50.0, show_progress=False)
    )
    assert report.num_failed == 3 and report.total_output_tokens == 0


def test_summary_percentiles():
    summary = Summary.of([0.001 * i for i in range(1, 101)])
    assert summary.median_ms == pytest.approx(50.5)
    assert summary.p99_ms == pytest.approx(99.01)
