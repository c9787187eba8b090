"""A client that goes away frees the replica at once: the gateway closes its upstream connection, and
`corral serve` aborts the request (its KV blocks freed), streamed or not, while the request still had well
over ten seconds of generation left."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import metric_value, start_gateway

MAX_TOKENS = 4000  # over 20 s of decode even on the fastest host seen (about 180 tok/s alone)


@pytest.fixture(scope="module")
def replica(corral_serve_module) -> str:
    return corral_serve_module("--max-model-len", "4096", "--kv-cache-memory", str(64 * 1024**2))


@pytest.fixture(scope="module")
def gw(replica):
    served = httpx.get(replica + "/v1/models").json()["data"][0]["id"]
    gateway = start_gateway({"groups": {"smol": {"backends": [{"url": replica, "model": served}],
                                                 "health": {"interval_s": 0.2}}}})
    gateway.wait_available("smol", 1)
    yield gateway
    gateway.stop()


def replica_metric(replica: str, name: str) -> float:
    return metric_value(httpx.get(replica + "/metrics", timeout=5).text, name)


def wait_running(replica: str, count: int, within_s: float) -> float:
    """Seconds until the replica reports ``count`` running requests; fails past ``within_s``."""
    started = time.monotonic()
    while replica_metric(replica, "corral:num_requests_running") != count:
        assert time.monotonic() - started < within_s, f"replica still not at {count} running after {within_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def seconds_left(replica: str) -> float:
    """The running request's remaining generation time, from the replica's token rate over a second."""
    before, started = replica_metric(replica, "corral:generation_tokens_total"), time.monotonic()
    done = before
    while done - before < 5 or time.monotonic() - started < 1.0:  # a step can stall on a busy host
        assert time.monotonic() - started < 30, "the replica generated almost nothing in 30 s"
        time.sleep(0.1)
        done = replica_metric(replica, "corral:generation_tokens_total")
    rate = (done - before) / (time.monotonic() - started)
    return (MAX_TOKENS - done) / rate


BODY = {"model": "smol", "prompt": "Write a very long story about a lighthouse keeper.", "max_tokens": MAX_TOKENS,
        "ignore_eos": True, "temperature": 0}


def test_a_dropped_stream_frees_the_replica_within_two_seconds(gw, replica):
    wait_running(replica, 0, 30)
    with httpx.stream("POST", gw.base_url + "/v1/completions", json={**BODY, "stream": True}, timeout=60) as stream:
        lines = stream.iter_lines()
        for _ in range(10):
            next(lines)
        assert replica_metric(replica, "corral:num_requests_running") == 1
        assert seconds_left(replica) >= 10
    # Leaving the block closed the connection mid-stream.
    assert wait_running(replica, 0, within_s=2.0) < 2.0
    assert gw.metric("corral_gateway_requests_total", group="smol", status="499") >= 1
    assert gw.metric("corral_gateway_backend_in_flight", group="smol") == 0


def test_a_dropped_non_streaming_request_frees_the_replica_within_two_seconds(gw, replica):
    wait_running(replica, 0, 30)

    async def drop() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            request = asyncio.create_task(client.post(gw.base_url + "/v1/completions", json=BODY))
            await asyncio.to_thread(wait_running, replica, 1, 30)
            assert await asyncio.to_thread(seconds_left, replica) >= 10
            request.cancel()  # closes the connection, no answer read
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(drop())
    assert wait_running(replica, 0, within_s=2.0) < 2.0
    assert gw.metric("corral_gateway_backend_in_flight", group="smol") == 0
