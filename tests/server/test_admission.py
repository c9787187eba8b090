"""Admission: past --max-waiting queued requests, new ones get 429 with Retry-After; waiting requests are
admitted in order of their `priority` (lower first), then of arrival."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from corral.runtime import EngineArgs, build_engine
from corral.server.app import UVICORN_OPTIONS, build_app
from corral.server.async_engine import AsyncEngine

from .conftest import free_port


@contextlib.contextmanager
def one_sequence_server(**app_options) -> Iterator[tuple[str, AsyncEngine]]:
    """A server whose engine runs one sequence at a time, so every other request waits: (completions URL, engine)."""
    args = EngineArgs(dtype="float32", max_model_len=512, kv_cache_memory=32 * 1024**2, max_num_seqs=1)
    engine = AsyncEngine(build_engine(args))
    app = build_app(engine, "m", **app_options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/completions", engine
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.shutdown()


def test_overload_gets_429_with_retry_after_and_others_complete():
    with one_sequence_server(max_waiting=2) as (url, _):
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


def test_a_waiting_request_of_higher_priority_is_admitted_first():
    with one_sequence_server() as (url, engine):
        finished: list[str] = []

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=120) as client:
                async def short(name: str, priority: int) -> None:
                    body = {"model": "m", "prompt": name, "max_tokens": 4, "ignore_eos": True, "priority": priority}
                    response = await client.post(url, json=body)
                    assert response.status_code == 200, response.text
                    finished.append(name)

                async def wait_for_queue(length: int) -> None:
                    while engine.num_waiting < length:
                        await asyncio.sleep(0.01)

                body = {"model": "m", "prompt": "Hello", "max_tokens": 48, "ignore_eos": True, "stream": True}
                async with client.stream("POST", url, json=body) as running:
                    chunks = running.aiter_lines()
                    await anext(chunks)  # the long request holds the only sequence slot from here on
                    low = asyncio.create_task(short("low", priority=10))  # arrives first, waits
                    await asyncio.wait_for(wait_for_queue(1), 30)
                    high = asyncio.create_task(short("high", priority=-10))
                    await asyncio.wait_for(wait_for_queue(2), 30)
                    async for _ in chunks:
                        pass
                await asyncio.gather(low, high)

        asyncio.run(scenario())
        for wrong in (True, "3", 2.5):
            response = httpx.post(url, json={"model": "m", "prompt": "x", "max_tokens": 1, "priority": wrong})
            assert response.status_code == 400 and "priority" in response.text, (wrong, response.text)
    assert finished == ["high", "low"]
