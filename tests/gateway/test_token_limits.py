"""Per-group token limits through a real gateway over a real tiny-model replica: a max_tokens over the cap is
clamped (the replica stops there with finish_reason "length"), a missing one gets the default, a prompt over
max_prompt_chars is refused with an OpenAI-shaped 400 naming the limit and never forwarded, and the clamp comes
before the cache key (two requests clamped to the same body share an entry)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from corral.gateway.config import GatewayConfigError, GroupConfig, parse_config
from corral.gateway.token_limits import clamp_max_tokens, prompt_chars

from .conftest import start_gateway


@pytest.fixture(scope="module")
def replica(corral_serve_module) -> str:
    return corral_serve_module("--served-model-name", "tiny", "--max-model-len", "512",
                               "--kv-cache-memory", str(32 * 1024**2))


def group(**limits) -> GroupConfig:
    return GroupConfig.model_validate({"backends": [{"url": "http://x"}], **limits})


def test_clamp_and_default_on_the_body():
    capped = group(max_tokens_cap=5, default_max_tokens=3)
    assert clamp_max_tokens({"max_tokens": 40}, capped) == {"max_tokens": 5}
    assert clamp_max_tokens({"max_tokens": 4}, capped) == {"max_tokens": 4}
    assert clamp_max_tokens({"max_completion_tokens": 9}, capped) == {"max_completion_tokens": 5}
    assert clamp_max_tokens({}, capped) == {"max_tokens": 3}
    assert clamp_max_tokens({}, group(max_tokens_cap=5)) == {"max_tokens": 5}
    assert clamp_max_tokens({"max_tokens": 40}, group(default_max_tokens=3)) == {"max_tokens": 40}
    assert clamp_max_tokens({"max_tokens": 40}, group()) == {"max_tokens": 40}
    assert prompt_chars({"prompt": ["ab", "cde"]}) == 5


def test_a_tenants_cap_and_the_groups_the_smaller_wins():
    assert clamp_max_tokens({"max_tokens": 40}, group(), tenant_cap=7) == {"max_tokens": 7}
    assert clamp_max_tokens({}, group(), tenant_cap=7) == {"max_tokens": 7}
    assert clamp_max_tokens({"max_tokens": 40}, group(max_tokens_cap=5), tenant_cap=7) == {"max_tokens": 5}
    assert clamp_max_tokens({"max_tokens": 40}, group(max_tokens_cap=9), tenant_cap=7) == {"max_tokens": 7}
    assert clamp_max_tokens({}, group(max_tokens_cap=9, default_max_tokens=8), tenant_cap=7) == {"max_tokens": 7}
    assert clamp_max_tokens({}, group(max_tokens_cap=9, default_max_tokens=3), tenant_cap=7) == {"max_tokens": 3}


def test_a_default_over_the_cap_is_a_one_line_config_error():
    with pytest.raises(GatewayConfigError, match=r"^t: groups.g: default_max_tokens 9 exceeds max_tokens_cap 5$"):
        parse_config({"groups": {"g": {"backends": [{"url": "http://x"}], "max_tokens_cap": 5,
                                       "default_max_tokens": 9}}}, "t")


@pytest.fixture(scope="module")
def gw(replica):

    gateway = start_gateway({"groups": {"tiny": {"backends": [{"url": replica}], "health": {"interval_s": 0.2},
                                                 "max_tokens_cap": 5, "default_max_tokens": 3,
                                                 "max_prompt_chars": 60}},
                             "cache": {"enabled": True}})
    gateway.wait_available("tiny", 1)
    yield gateway
    gateway.stop()


def test_max_tokens_over_the_cap_is_clamped_not_refused(gw):
    c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
    answer = c.completions.create(model="tiny", prompt="Bread", max_tokens=40, extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 5 and answer.choices[0].finish_reason == "length"
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=40,
                                     extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"


def test_a_missing_max_tokens_gets_the_default(gw):
    c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
    answer = c.completions.create(model="tiny", prompt="Bread", extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 3 and answer.choices[0].finish_reason == "length"


def test_a_prompt_over_the_limit_is_a_400_and_the_gateway_keeps_serving(gw):
    forwarded = gw.metric("corral_gateway_requests_total", group="tiny")
    c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        c.completions.create(model="tiny", prompt="x" * 61, max_tokens=2)
    error = raised.value.body
    assert error["code"] == "context_length_exceeded" and "max_prompt_chars" in error["message"]
    assert "61" in error["message"] and "60" in error["message"] and error["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "y" * 80}])
    assert gw.metric("corral_gateway_requests_total", group="tiny") == forwarded  # never forwarded
    assert c.completions.create(model="tiny", prompt="x" * 10, max_tokens=2).choices[0].text is not None


def test_the_clamp_comes_before_the_cache_key(gw):
    body = {"model": "tiny", "prompt": "Croissants", "temperature": 0, "max_tokens": 40}
    first = httpx.post(gw.base_url + "/v1/completions", json=body, timeout=60)
    assert first.headers["x-corral-cache"] == "miss"
    for _ in range(200):
        if gw.gateway.cache.stats.stores:
            break
        time.sleep(0.02)
    second = httpx.post(gw.base_url + "/v1/completions", json={**body, "max_tokens": 90}, timeout=60)
    assert second.headers["x-corral-cache"] == "hit" and second.content == first.content
