"""Fallback between groups through a real gateway: a primary whose backend (a real uvicorn server in this test
that always answers an OpenAI-shaped 429) or dead URL cannot answer sends the request on to a group of a real
tiny-model replica, marked (x-corral-fallback, the answering model in the body, a counter by from/to/reason) and
never cached under the primary's key; with allow_fallback false it is a 429 with Retry-After; a prompt over the
primary's max_prompt_chars falls back instead of a 400; config names fallbacks that exist, without cycles."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from corral.gateway.config import GatewayConfigError, parse_config
from corral.gateway.errors import GatewayError
from corral.gateway.supervisor import free_port

from .conftest import start_gateway


def busy_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/{path:path}")
    async def busy(path: str) -> JSONResponse:
        body = {"error": {"message": "too many requests", "type": "rate_limit_error", "param": None,
                          "code": "rate_limit_exceeded"}}
        return JSONResponse(body, status_code=429, headers={"retry-after": "7"})

    return app


@pytest.fixture(scope="module")
def busy_url():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(busy_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def replica(corral_serve_module) -> str:
    return corral_serve_module("--served-model-name", "tiny", "--max-model-len", "512",
                               "--kv-cache-memory", str(32 * 1024**2))


@pytest.fixture(scope="module")
def narrow_replica(corral_serve_module) -> str:
    """A replica whose context (64 tokens) a long prompt overflows: it answers 400 context_length_exceeded."""
    return corral_serve_module("--served-model-name", "narrow", "--max-model-len", "64",
                               "--kv-cache-memory", str(8 * 1024**2))


@pytest.fixture(scope="module")
def gw(replica, narrow_replica, busy_url):
    fast = {"health": {"interval_s": 0.2}}
    gateway = start_gateway({"groups": {
        "tiny": {"backends": [{"url": replica}], **fast},
        "big": {"backends": [{"url": busy_url}], "fallbacks": ["tiny"], **fast},
        "strict": {"backends": [{"url": busy_url}], "fallbacks": ["tiny"], "allow_fallback": False, **fast},
        "gone": {"backends": [{"url": "http://127.0.0.1:9"}], "fallbacks": ["tiny"], **fast},
        "hot": {"backends": [{"url": replica, "model": "tiny"}], "overload": 3, "fallbacks": ["tiny"], **fast},
        "short": {"backends": [{"url": replica, "model": "tiny"}], "max_prompt_chars": 20, "fallbacks": ["tiny"],
                  **fast},
        "narrow": {"backends": [{"url": narrow_replica}], "fallbacks": ["tiny"], **fast},
        "narrow_alone": {"backends": [{"url": narrow_replica, "model": "narrow"}], **fast},
        "first": {"backends": [{"url": busy_url}], "fallbacks": ["second"], **fast},
        "second": {"backends": [{"url": "http://127.0.0.1:9"}], "fallbacks": ["tiny"], **fast},
        "front": {"backends": [{"url": busy_url}], "fallbacks": ["asleep"], **fast},
        "asleep": {"backends": [{"url": replica, "model": "tiny"}], **fast},
    }, "cache": {"enabled": True}})
    for name in ("tiny", "big", "strict", "short", "hot", "narrow", "narrow_alone", "first", "asleep"):
        gateway.wait_available(name, 1)
    yield gateway
    gateway.stop()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_an_upstream_429_falls_back_marked_and_is_not_cached(gw):
    body = {"model": "big", "prompt": "Bread", "max_tokens": 4, "temperature": 0}
    for _ in range(2):
        response = httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["x-corral-fallback"] == "big->tiny" and response.json()["model"] == "tiny"
        assert response.headers["x-corral-cache"] == "miss"  # a fallback's answer is never stored
    time.sleep(0.2)
    assert gw.gateway.cache.stats.stores == 0
    assert gw.metric("corral_gateway_fallbacks_total", **{"from": "big", "to": "tiny",
                                                          "reason": "upstream_429"}) == 2
    answer = client(gw).chat.completions.create(model="big", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=3)
    assert answer.model == "tiny" and answer.choices[0].message.content is not None


def test_with_fallback_forbidden_it_is_a_429_with_retry_after(gw):
    response = httpx.post(gw.base_url + "/v1/completions", json={"model": "strict", "prompt": "Hi", "max_tokens": 2},
                          timeout=60)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.RateLimitError):
        client(gw).completions.create(model="strict", prompt="Hi", max_tokens=2)


def test_an_unavailable_primary_falls_back(gw):
    response = httpx.post(gw.base_url + "/v1/completions", json={"model": "gone", "prompt": "Hi", "max_tokens": 2},
                          timeout=60)
    assert response.status_code == 200 and response.headers["x-corral-fallback"] == "gone->tiny"
    assert gw.metric("corral_gateway_fallbacks_total", reason="no_backend") == 1


class StandInScaler:
    """In place of an autoscaled group's controller (autoscale/local.py, tested end to end in
    test_autoscale_gateway.py): its one backend counts as a replica not started yet until a request waits for one."""

    def __init__(self, backend, refuse: bool = False):
        self.backend, self.refuse, self.waits = backend, refuse, 0
        backend.ejected_until = float("inf")  # out of routing, as a group at zero replicas

    async def wait_for_replica(self, deadline: float) -> None:
        self.waits += 1
        if self.refuse:
            raise GatewayError(503, "this host fits none", code="no_capacity")
        self.backend.ejected_until = 0.0  # "started"


def test_a_fallback_at_zero_replicas_is_woken_and_answers(gw):
    (asleep,) = gw.gateway.groups["asleep"].backends
    body = {"model": "front", "prompt": "Hi", "max_tokens": 2}
    try:
        for refuse in (True, False):
            gw.gateway.scalers["asleep"] = scaler = StandInScaler(asleep, refuse)
            response = httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60)
            assert scaler.waits == 1
            if refuse:  # the host fits no replica of it: on to the next fallback, here none
                assert response.status_code == 429, response.text
            else:
                assert response.status_code == 200, response.text
                assert response.headers["x-corral-fallback"] == "front->asleep"
    finally:
        del gw.gateway.scalers["asleep"]
        asleep.ejected_until = 0.0


def test_a_prompt_over_the_primary_limit_falls_back_instead_of_a_400(gw):
    c = client(gw)
    assert c.completions.create(model="short", prompt="Hi", max_tokens=2).model == "tiny"  # its own replica
    raw = c.completions.with_raw_response.create(model="short", prompt="x" * 30, max_tokens=2)
    assert raw.headers["x-corral-fallback"] == "short->tiny"
    assert gw.metric("corral_gateway_fallbacks_total", reason="context_window") == 1


LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 12  # about 120 tokens, over narrow's 64


def test_a_prompt_the_replica_finds_too_long_falls_back_on_its_context_length_error(gw):
    c = client(gw)
    own = c.completions.with_raw_response.create(model="narrow", prompt="Hi", max_tokens=2)
    assert "x-corral-fallback" not in own.headers and own.parse().model == "narrow"
    raw = c.chat.completions.with_raw_response.create(
        model="narrow", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2)
    assert raw.headers["x-corral-fallback"] == "narrow->tiny" and raw.parse().model == "tiny"
    assert gw.metric("corral_gateway_fallbacks_total", **{"from": "narrow", "reason": "context_window"}) == 1


def test_without_a_fallback_the_replicas_context_length_error_reaches_the_client(gw):
    with pytest.raises(openai.BadRequestError) as raised:
        client(gw).completions.create(model="narrow_alone", prompt=LONG_PROMPT, max_tokens=2)
    assert raised.value.code == "context_length_exceeded" and "context is 64 tokens" in raised.value.message


def test_fallbacks_of_fallbacks_are_followed(gw):
    """first (429) -> second (no backend) -> tiny: second's fallbacks after first's, marked from the origin."""
    response = httpx.post(gw.base_url + "/v1/completions", json={"model": "first", "prompt": "Hi", "max_tokens": 2},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-corral-fallback"] == "first->tiny" and response.json()["model"] == "tiny"
    # second has no backend, so it is passed over without a try
    assert gw.metric("corral_gateway_fallbacks_total", **{"from": "first", "to": "tiny", "reason": "upstream_429"}) == 1


def test_an_overloaded_group_falls_back(gw):
    backend = gw.gateway.groups["hot"].backends[0]
    body = {"model": "hot", "prompt": "Hi", "max_tokens": 2}
    assert "x-corral-fallback" not in httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60).headers
    backend.in_flight += 3  # as if three requests were in flight there: its load reaches `overload`
    try:
        response = httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60)
    finally:
        backend.in_flight -= 3
    assert response.status_code == 200 and response.headers["x-corral-fallback"] == "hot->tiny"
    assert gw.metric("corral_gateway_fallbacks_total", reason="overloaded") == 1


@pytest.mark.parametrize(("groups", "message"), [
    ({"a": {"fallbacks": ["b"]}}, "t: groups.a.fallbacks.0: no group named 'b'"),
    ({"a": {"fallbacks": ["b"]}, "b": {"fallbacks": ["a"]}}, "t: groups.a.fallbacks: a cycle: a -> b -> a"),
])
def test_fallback_names_exist_without_cycles(groups, message):
    data = {"groups": {name: {"backends": [{"url": "http://x"}], **group} for name, group in groups.items()}}
    with pytest.raises(GatewayConfigError) as raised:
        parse_config(data, "t")
    assert str(raised.value) == message
