"""Tenants' limits on the request path, end to end: the official openai client and httpx through a real gateway in
front of a real `corral serve` replica of the tiny random-weight model. Requests per minute and tokens per minute
over their limit get 429 with the window's Retry-After and OpenAI's error body naming the limit; tokens are what
the replica's usage says, streamed or not (asked for upstream, stripped for a client that did not ask); a daily
budget is a 429 insufficient_quota that outlives a gateway restart (SQLite); two gateways sharing one real
redis-server enforce one limit; a concurrent-request slot is given back on every way a request can end."""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
import redis

from corral.gateway.budgets import current_period
from corral.gateway.key_store import SQLiteKeyStore

from .conftest import sse_events, start_gateway

ADMIN = "test-admin-key-0123456789"  # /gateway/status needs it with auth on
PROMPT = "hello there"  # 2 tokens for the tiny model's tokenizer (its usage says so)
TENANTS = {
    "rpm": {"requests_per_minute": 3},
    "tpm": {"tokens_per_minute": 100},
    "usage": {"tokens_per_day": 10**9},
    "one": {"max_concurrent": 1},
    "daily": {"tokens_per_day": 40},
}


@pytest.fixture(scope="module")
def replica(tiny_replica) -> str:
    return tiny_replica


def gateway_config(replica: str, store: Path, tmp: Path, limits: dict | None = None) -> dict:
    fast = {"health": {"interval_s": 0.2}}
    return {
        "groups": {
            "tiny": {"backends": [{"url": replica}], **fast},
            # Never healthy: a request to it falls back to tiny.
            "gone": {"backends": [{"url": "http://127.0.0.1:9", "model": "tiny"}], "fallbacks": ["tiny"], **fast},
            # Marked healthy by the test: each request fails on connect (no retry).
            "dead": {"backends": [{"url": "http://127.0.0.1:9", "model": "tiny"}], "retries": 0,
                     "health": {"interval_s": 60}},
        },
        "cache": {"enabled": True},
        "auth": {"enabled": True, "store": str(store),
                 "tenants": {name: {"limits": limits_} for name, limits_ in TENANTS.items()}},
        "limits": limits or {"budget_path": str(tmp / "budgets.sqlite")},
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    store_path = tmp_path_factory.mktemp("limits") / "keys.sqlite"
    store = SQLiteKeyStore(store_path)
    keys = {tenant: store.create(tenant)[1] for tenant in TENANTS}
    store.close()
    return store_path, keys


@pytest.fixture(scope="module")
def gw(replica, keys, tmp_path_factory):
    gateway = start_gateway(gateway_config(replica, keys[0], tmp_path_factory.mktemp("budgets")), ADMIN)
    gateway.wait_available("tiny", 1)
    gateway.gateway.groups["dead"].backends[0].healthy = True  # only its connect error remains
    yield gateway
    gateway.stop()


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=60)


def post(gw, key: str, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, **(body or {})}
    return httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}", **(headers or {})})


def assert_limit_error(response: httpx.Response, code: str, names: str) -> int:
    """The 429's Retry-After, after checking its OpenAI shape."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == code and names in error["message"], error
    assert error["type"] == ("insufficient_quota" if code == "insufficient_quota" else "rate_limit_error")
    return int(response.headers["retry-after"])


def test_a_burst_over_requests_per_minute_gets_429_with_the_windows_retry_after(gw, keys):
    c = client(gw, keys[1]["rpm"])
    first_sent = time.time()
    for _ in range(3):
        c.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        c.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    refused_at = time.time()
    retry_after = assert_limit_error(caught.value.response, "rate_limit_exceeded", "requests_per_minute")
    # The moving window frees its first request 60 s after it was admitted: strictly past it, whole seconds.
    assert 60 - (refused_at - first_sent) <= retry_after <= 61
    assert gw.metric("corral_gateway_limit_rejections_total", limit="requests_per_minute") == 1
    with pytest.raises(openai.RateLimitError):  # streams are counted alike
        c.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, stream=True)


def budget_used(gw, tenant: str) -> int:
    """Tokens charged to ``tenant`` today, read from the gateway's budget store (its SQLite file)."""
    store = gw.gateway.ledger.limiter.budgets
    return asyncio.run(store.used(tenant, [current_period("day", time.time())]))[0]


def test_tokens_are_the_replicas_usage_streamed_or_not_and_a_stream_shows_only_what_was_asked(gw, keys):
    key = keys[1]["usage"]
    response = post(gw, key)
    assert budget_used(gw, "usage") == response.json()["usage"]["total_tokens"] == 10
    chat = client(gw, key).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=5, extra_body={"ignore_eos": True})
    assert budget_used(gw, "usage") == 10 + chat.usage.total_tokens

    # Many tokens for few characters: the gateway's own estimate (characters / 4) would be far off.
    prompt = "1, 2, 3, 4, 5, 6, 7, 8"

    def stream(**extra) -> list[str]:
        with httpx.stream("POST", gw.base_url + "/v1/completions", timeout=60,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "tiny", "prompt": prompt, "max_tokens": 6, "ignore_eos": True,
                                "stream": True, **extra}) as answer:
            return sse_events(list(answer.iter_lines()))

    before = budget_used(gw, "usage")
    asked = stream(stream_options={"include_usage": True})
    usage = json.loads(asked[-2])["usage"]
    assert asked[-1] == "[DONE]" and usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] >= 2 * (len(prompt) // 4)
    assert budget_used(gw, "usage") == before + usage["total_tokens"]
    quiet = stream()  # the gateway asks the replica for the usage, and keeps it from this client
    assert quiet[-1] == "[DONE]" and len(quiet) == len(asked) - 1 and not any('"usage"' in e for e in quiet)
    assert budget_used(gw, "usage") == before + 2 * usage["total_tokens"]


def test_a_burst_over_tokens_per_minute_gets_429_when_the_usage_fills_the_window(gw, keys):
    key, used, admitted = keys[1]["tpm"], [], 0
    started = time.time()
    for _ in range(20):  # 18 tokens each: the window fills at the 6th
        response = post(gw, key, {"max_tokens": 16})
        if response.status_code != 200:
            break
        admitted += 1
        used.append(response.json()["usage"]["total_tokens"])
    refused_at = time.time()
    retry_after = assert_limit_error(response, "rate_limit_exceeded", "tokens_per_minute")
    # Refused only once the usage charged filled the window, and not before.
    assert sum(used) >= 100 and admitted == 6
    assert 1 <= retry_after <= 61
    if math.floor(started / 60) == math.floor(refused_at / 60):
        # The sliding window counter's minutes are the epoch's: its first tokens free up at the next minute.
        assert abs(retry_after - (math.floor(60 - refused_at % 60) + 1)) <= 1
    assert gw.metric("corral_gateway_limit_rejections_total", limit="tokens_per_minute") >= 1


def wait_admitted(gw, key: str, within_s: float = 2.0, after: str = "") -> float:
    """Seconds until a short request of ``key`` is answered 200; fails on anything but a 429 meanwhile."""
    started = time.monotonic()
    while True:
        response = post(gw, key, {"max_tokens": 1})
        if response.status_code == 200:
            return time.monotonic() - started
        assert_limit_error(response, "rate_limit_exceeded", "max_concurrent")
        assert time.monotonic() - started < within_s, f"the slot was not given back within {within_s} s after {after}"
        time.sleep(0.05)


def test_a_concurrent_slot_is_given_back_however_the_request_ends(gw, keys):
    key = keys[1]["one"]
    auth = {"authorization": f"Bearer {key}"}
    long = {"max_tokens": 480, "ignore_eos": True}

    def drop_stream() -> None:
        with httpx.stream("POST", gw.base_url + "/v1/completions", headers=auth, timeout=60,
                          json={"model": "tiny", "prompt": PROMPT, "stream": True, **long}) as answer:
            lines = answer.iter_lines()
            for _ in range(6):
                next(lines)
            assert post(gw, key).status_code == 429  # held while it streams
        # leaving the block closed the connection mid-stream

    async def drop_body() -> None:
        async with httpx.AsyncClient(timeout=60, headers=auth) as http:
            request = asyncio.create_task(http.post(gw.base_url + "/v1/completions",
                                                    json={"model": "tiny", "prompt": PROMPT, **long}))
            await asyncio.sleep(0.3)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

    def stream_timeout() -> None:
        with httpx.stream("POST", gw.base_url + "/v1/completions", timeout=60,
                          headers={**auth, "x-request-timeout": "0.5"},
                          json={"model": "tiny", "prompt": PROMPT, "stream": True, **long}) as answer:
            events = sse_events(list(answer.iter_lines()))
        assert "exceeded its time limit" in events[-2] and events[-1] == "[DONE]"

    cacheable = {"temperature": 0, "max_tokens": 3}
    paths = {
        "a body": lambda: post(gw, key).status_code == 200,
        "a stream": lambda: len(list(client(gw, key).completions.create(model="tiny", prompt=PROMPT, max_tokens=3,
                                                                        stream=True))) >= 3,
        "the replica's 400": lambda: post(gw, key, {"bogus_field": 1}).status_code == 400,
        "a connect error": lambda: post(gw, key, {"model": "dead"}).status_code == 503,
        "a time limit": lambda: post(gw, key, long, {"x-request-timeout": "0.2"}).status_code == 504,
        "a stream's time limit": stream_timeout,
        "a fallback": lambda: post(gw, key, {"model": "gone"}).headers["x-corral-fallback"] == "gone->tiny",
        "a cache miss": lambda: post(gw, key, cacheable).headers["x-corral-cache"] == "miss",
        "a cache hit": lambda: post(gw, key, cacheable).headers["x-corral-cache"] == "hit",
        "a client gone mid-stream": drop_stream,
        "a client gone before the answer": lambda: asyncio.run(drop_body()),
    }
    for name, path in paths.items():
        assert path() is not False, name
        wait_admitted(gw, key, after=name)
    assert gw.metric("corral_gateway_limit_rejections_total", limit="max_concurrent") >= 1


def test_a_spent_daily_budget_is_insufficient_quota_until_midnight_utc_and_outlives_a_restart(replica, keys,
                                                                                             tmp_path):
    config = gateway_config(replica, keys[0], tmp_path)
    key = keys[1]["daily"]
    gateway = start_gateway(config, ADMIN)
    try:
        gateway.wait_available("tiny", 1)
        statuses = [post(gateway, key).status_code for _ in range(6)]  # 10 tokens each, 40 a day
    finally:
        gateway.stop()
    assert statuses == [200] * 4 + [429] * 2
    gateway = start_gateway(config, ADMIN)  # the budgets' SQLite file is all that carries over
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            client(gateway, key).completions.create(model="tiny", prompt=PROMPT, max_tokens=1)
        now = time.time()
    finally:
        gateway.stop()
    retry_after = assert_limit_error(caught.value.response, "insufficient_quota", "tokens_per_day")
    assert caught.value.code == "insufficient_quota"
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400
    assert abs(retry_after - (midnight - now)) <= 2


def test_two_gateways_sharing_one_redis_server_enforce_one_limit_together(replica, keys, redis_url, tmp_path):
    redis.Redis.from_url(redis_url).flushdb()
    config = gateway_config(replica, keys[0], tmp_path, {"storage": redis_url})
    a, b = start_gateway(config, ADMIN), start_gateway(config, ADMIN)
    try:
        a.wait_available("tiny", 1)
        b.wait_available("tiny", 1)
        statuses = [post(gateway, keys[1]["rpm"], {"max_tokens": 1}).status_code for gateway in (a, b) * 3]
        assert sorted(statuses) == [200] * 3 + [429] * 3 and statuses[:3] == [200] * 3
        one = keys[1]["one"]
        with httpx.stream("POST", a.base_url + "/v1/completions", headers={"authorization": f"Bearer {one}"},
                          timeout=60, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 480,
                                            "ignore_eos": True, "stream": True}) as answer:
            lines = answer.iter_lines()  # held: a dropped iterator would close the connection
            next(lines)
            assert_limit_error(post(b, one), "rate_limit_exceeded", "max_concurrent")
        wait_admitted(b, one)  # the slot that gateway a gave back, in Redis
    finally:
        a.stop()
        b.stop()
