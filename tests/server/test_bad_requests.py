"""Bad requests get the right 4xx with an OpenAI-shaped error; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from .conftest import API_KEY, MODEL_NAME

GOOD = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
AUTH = {"Authorization": f"Bearer {API_KEY}"}

CASES = [
    # (id, path, body (dict or raw bytes), headers, status, text expected in the message)
    ("malformed-json", "/v1/completions", b'{"model": ', AUTH, 400, "not valid JSON"),
    ("not-an-object", "/v1/completions", b"[1, 2]", AUTH, 400, ""),
    ("invalid-utf8", "/v1/completions", b'{"model": "\xff\xfe", "prompt": "x"}', AUTH, 400, ""),
    ("missing-prompt", "/v1/completions", {"model": MODEL_NAME}, AUTH, 400, "prompt"),
    ("missing-model", "/v1/completions", {"prompt": "x"}, AUTH, 400, "model"),
    ("prompt-wrong-type", "/v1/completions", {**GOOD, "prompt": 3.5}, AUTH, 400, "prompt"),
    ("max-tokens-negative", "/v1/completions", {**GOOD, "max_tokens": -1}, AUTH, 400, "max_tokens"),
    ("max-tokens-string", "/v1/completions", {**GOOD, "max_tokens": "many"}, AUTH, 400, "max_tokens"),
    ("max-tokens-over-cap", "/v1/completions", {**GOOD, "max_tokens": 10**9}, AUTH, 400, "max_tokens"),
    ("temperature-negative", "/v1/completions", {**GOOD, "temperature": -1}, AUTH, 400, "temperature"),
    ("top-p-zero", "/v1/completions", {**GOOD, "top_p": 0}, AUTH, 400, "top_p"),
    ("n-zero", "/v1/completions", {**GOOD, "n": 0}, AUTH, 400, "n"),
    ("presence-penalty-huge", "/v1/completions", {**GOOD, "presence_penalty": 50}, AUTH, 400, "presence_penalty"),
    ("logprobs-too-many", "/v1/completions", {**GOOD, "logprobs": 1000}, AUTH, 400, "logprobs"),
    ("max-tokens-zero-without-echo", "/v1/completions", {**GOOD, "max_tokens": 0}, AUTH, 400, "echo"),
    ("prompt-logprobs-too-many", "/v1/completions", {**GOOD, "prompt_logprobs": 21}, AUTH, 400, "prompt_logprobs"),
    ("chat-max-tokens-zero", "/v1/chat/completions", {**CHAT, "max_tokens": 0}, AUTH, 400, "max_tokens"),
    ("empty-prompt", "/v1/completions", {**GOOD, "prompt": ""}, AUTH, 400, "empty"),
    ("token-id-out-of-vocab", "/v1/completions", {**GOOD, "prompt": [1, 2, 10**8]}, AUTH, 400, "token ids"),
    ("prompt-too-long", "/v1/completions", {**GOOD, "prompt": [100] * 2000}, AUTH, 400, "2000"),
    ("unknown-model", "/v1/completions", {**GOOD, "model": "gpt-9"}, AUTH, 404, "gpt-9"),
    ("missing-key", "/v1/completions", GOOD, {}, 401, "API key"),
    ("wrong-key", "/v1/completions", GOOD, {"Authorization": "Bearer nope"}, 401, "API key"),
    ("models-wrong-key", "/v1/models", None, {"Authorization": "Bearer nope"}, 401, "API key"),
    ("chat-empty-messages", "/v1/chat/completions", {**CHAT, "messages": []}, AUTH, 400, "messages"),
    ("chat-message-without-role", "/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}, AUTH, 400,
     "role"),
    ("chat-top-logprobs-negative", "/v1/chat/completions", {**CHAT, "top_logprobs": -1}, AUTH, 400, "top_logprobs"),
    ("stop-wrong-type", "/v1/chat/completions", {**CHAT, "stop": 5}, AUTH, 400, "stop"),
    ("unknown-route", "/v1/nothing", {}, AUTH, 404, ""),
    # bounds on one request (server/limits.py; the fixture's server has the defaults)
    ("too-many-prompts", "/v1/completions", {**GOOD, "prompt": ["x"] * 257}, AUTH, 400, "--max-prompts-per-request"),
    ("too-many-sequences", "/v1/completions", {**GOOD, "prompt": ["x"] * 100, "n": 3}, AUTH, 400,
     "--max-sequences-per-request"),
    ("too-many-stop-strings", "/v1/chat/completions", {**CHAT, "stop": [f"s{i}" for i in range(65)]}, AUTH, 400,
     "--max-stop-strings"),
    ("body-too-large", "/v1/completions", {**GOOD, "prompt": "x" * (9 * 1024**2)}, AUTH, 413, "--max-request-bytes"),
]


@pytest.mark.parametrize("path,body,headers,status,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_openai_error(server, path, body, headers, status, needle):
    url = server.base_url + path
    if body is None:
        response = httpx.get(url, headers=headers, timeout=30)
    elif isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={**headers, "content-type": "application/json"}, timeout=30)
    else:
        response = httpx.post(url, json=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert needle.lower() in error["message"].lower()
    assert error["param"] is None or not error["param"].isdigit(), "param names a field, never a character offset"
    if needle == "2000":  # OpenAI's code, which the gateway's context-window fallback keys on
        assert error["code"] == "context_length_exceeded"


def test_a_chunked_body_is_refused_once_past_the_limit(server):
    """No Content-Length to check up front: the body is counted as it arrives, and refused past the limit."""

    def body():
        yield b'{"model": "' + MODEL_NAME.encode() + b'", "prompt": "'
        for _ in range(12):  # 12 MiB, in chunks
            yield b"x" * 1024**2
        yield b'"}'

    response = httpx.post(server.base_url + "/v1/completions", content=body(), timeout=60,
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "--max-request-bytes" in response.json()["error"]["message"]


def test_request_limits_by_name(server):
    ok = {**GOOD, "prompt": ["x"] * 4, "n": 2, "stop": ["a", "b"]}
    assert httpx.post(server.base_url + "/v1/completions", json=ok, headers=AUTH, timeout=60).status_code == 200
    response = httpx.post(server.base_url + "/v1/completions", json={**GOOD, "prompt": ["x"] * 100, "n": 3},
                          headers=AUTH, timeout=30)
    assert response.json()["error"]["param"] == "n"


def test_server_still_serves_after_bad_requests(server):
    response = httpx.post(server.base_url + "/v1/completions", json=GOOD, headers=AUTH, timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
    server.wait_idle()


def test_health_and_version(server):
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert "version" in httpx.get(server.base_url + "/version").json()
