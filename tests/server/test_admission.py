"""Admission control: past --max-waiting queued requests, new ones get 429 with Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import uvicorn

from corral.runtime import EngineArgs, build_engine
from corral.server.app import UVICORN_OPTIONS, build_app
from corral.server.async_engine import AsyncEngine

from .conftest import free_port


def test_overload_gets_429_with_retry_after_and_others_complete():
    args = EngineArgs(dtype="float32", max_model_len=512, kv_cache_memory=32 * 1024**2, max_num_seqs=1)
    engine = AsyncEngine(build_engine(args))
    app = build_app(engine, "m", max_waiting=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)

        async def send_all() -> list[httpx.Response]:
            body = {"model": "m", "prompt": "Hello", "max_tokens": 24, "ignore_eos": True}
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(i: int) -> httpx.Response:
                    await asyncio.sleep(0.05 * i)  # arrive one after another
                    return await client.post(url, json=body)

                return await asyncio.gather(*(one(i) for i in range(8)))

        responses = asyncio.run(send_all())
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) >= 3 and 429 in statuses, statuses
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.shutdown()
