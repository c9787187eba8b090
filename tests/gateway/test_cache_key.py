"""The cache key, the deterministic-request rule, Cache-Control parsing and the config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.datastructures import Headers

from corral.gateway.cache import CacheConfig
from corral.gateway.cache_key import CacheDirectives, cache_control, cache_key, is_cacheable

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ON = CacheConfig(enabled=True)


def chat_body(**extra) -> dict:
    return {"model": "smol", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}], "temperature": 0, **extra}


def test_field_order_and_nested_order_do_not_matter():
    a = chat_body(max_tokens=8, stop=["\n"])
    b = {"stop": ["\n"], "temperature": 0, "max_tokens": 8, "model": "smol",
         "messages": [{"content": "Be brief.", "role": "system"}, {"content": "Hi", "role": "user"}]}
    assert cache_key("g", CHAT, a) == cache_key("g", CHAT, b)


@pytest.mark.parametrize(("a", "b"), [
    ({}, {"temperature": 1}),  # absent temperature is OpenAI's default 1 (the server's too)
    ({"temperature": 0}, {"temperature": 0.0}),
    ({"temperature": None}, {"temperature": 1.0}),
    ({}, {"n": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False}),
    ({"stop": "\n"}, {"stop": ["\n"]}),
    ({"stop": None}, {"stop": []}),
    ({}, {"stream": True, "stream_options": {"include_usage": True}}),
    ({}, {"user": "u1", "metadata": {"a": "b"}, "store": True, "safety_identifier": "x", "prompt_cache_key": "k"}),
])
def test_requests_the_server_treats_alike_share_a_key(a, b):
    base = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}]}
    assert cache_key("g", CHAT, base | a) == cache_key("g", CHAT, base | b)


# Every field that can change a chat answer (and a few only some backends know): each must change the key.
CHAT_CHANGES = [
    ("model", "other"), ("messages", [{"role": "user", "content": "Hi!"}]), ("max_tokens", 9),
    ("max_completion_tokens", 9), ("temperature", 0.5), ("top_p", 0.9), ("top_k", 5), ("min_p", 0.1), ("seed", 1),
    ("stop", ["."]), ("stop_token_ids", [2]), ("n", 2), ("presence_penalty", 0.5), ("frequency_penalty", 0.5),
    ("repetition_penalty", 1.1), ("ignore_eos", True), ("min_tokens", 3), ("logit_bias", {"5": 10}),
    ("allowed_token_ids", [1, 2]), ("bad_words", ["no"]), ("logprobs", True), ("top_logprobs", 2),
    ("add_generation_prompt", False), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"), ("parallel_tool_calls", False), ("response_format", {"type": "json_object"}),
    ("guided_regex", "a+"), ("prompt_logprobs", 1), ("service_tier", "flex"), ("some_future_field", 1),
]


@pytest.mark.parametrize(("field", "value"), CHAT_CHANGES, ids=[f for f, _ in CHAT_CHANGES])
def test_every_output_changing_chat_field_changes_the_key(field, value):
    base = chat_body(max_tokens=8, max_completion_tokens=8, stop=["\n"])
    assert cache_key("g", CHAT, base) != cache_key("g", CHAT, base | {field: value})


COMPLETION_CHANGES = [("prompt", "Hello!"), ("prompt", [1, 2]), ("suffix", "end"), ("echo", True), ("logprobs", 1),
                      ("best_of", 2), ("max_tokens", 0)]


@pytest.mark.parametrize(("field", "value"), COMPLETION_CHANGES)
def test_every_output_changing_completion_field_changes_the_key(field, value):
    base = {"model": "smol", "prompt": "Hello", "temperature": 0, "max_tokens": 8}
    assert cache_key("g", COMPLETIONS, base) != cache_key("g", COMPLETIONS, base | {field: value})


def test_group_path_and_tenant_are_in_the_key():
    body = chat_body()
    key = cache_key("g", CHAT, body)
    assert key != cache_key("h", CHAT, body)
    assert key != cache_key("g", COMPLETIONS, body)
    assert key != cache_key("g", CHAT, body, tenant="acme")
    assert cache_key("g", CHAT, body, tenant="acme") != cache_key("g", CHAT, body, tenant="globex")
    assert cache_key("g", CHAT, body, tenant="acme") == cache_key("g", CHAT, dict(body), tenant="acme")
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize(("body", "cacheable"), [
    ({"temperature": 0}, True),
    ({"temperature": 0.0, "n": 3, "logprobs": True, "top_logprobs": 2}, True),
    ({"temperature": 0.7, "seed": 42}, True),
    ({"seed": 0}, True),
    ({}, False),  # absent temperature is 1
    ({"temperature": None}, False),
    ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "seed": None}, False),
    ({"temperature": 0.7, "seed": True}, False),  # a bool is not a seed
    ({"temperature": "0"}, False),  # the upstream refuses it; the cache stays out
])
def test_only_deterministic_requests_are_cacheable(body, cacheable):
    verdict = is_cacheable({"model": "smol", "prompt": "x"} | body, ON)
    assert bool(verdict) is cacheable, verdict.reason


def test_sampled_requests_cacheable_only_when_configured():
    body = {"model": "smol", "prompt": "x", "temperature": 0.7}
    assert not is_cacheable(body, ON)
    assert is_cacheable(body, CacheConfig(enabled=True, cache_sampled=True))
    assert not is_cacheable({"model": "smol", "temperature": 0}, CacheConfig())  # disabled
    assert not is_cacheable(["not", "a", "body"], ON)  # type: ignore[arg-type]
    assert not is_cacheable({"prompt": "x", "temperature": 0}, ON)


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, CacheDirectives()),
    ({"Cache-Control": "no-cache"}, CacheDirectives(no_cache=True)),
    ({"cache-control": "No-Store"}, CacheDirectives(no_store=True)),
    ({"Cache-Control": "max-age=0 ,  no-cache,no-store"}, CacheDirectives(True, True)),
    ({"Cache-Control": "max-age=60"}, CacheDirectives()),
    ({"Pragma": "no-cache"}, CacheDirectives()),
    ([("cache-control", "no-cache"), ("Cache-Control", "no-store")], CacheDirectives(True, True)),
    (Headers(raw=[(b"cache-control", b"max-age=0"), (b"cache-control", b"no-store")]), CacheDirectives(no_store=True)),
])
def test_cache_control(headers, expected):
    assert cache_control(headers) == expected


def test_config():
    assert CacheConfig().enabled is False and CacheConfig().backend == "memory"
    with pytest.raises(ValidationError, match="redis_url"):
        CacheConfig(backend="redis")
    with pytest.raises(ValidationError, match="extra"):
        CacheConfig(ttl=5)
    with pytest.raises(ValidationError):
        CacheConfig(ttl_s=0)
    assert CacheConfig(backend="redis", redis_url="redis://127.0.0.1:1/0").redis_url
