"""POST /tokenize and /detokenize (vLLM's shapes) against a live server: the same ids the engine uses."""

from __future__ import annotations

import httpx
import pytest

from .conftest import API_KEY, MODEL_NAME

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXT = "The capital of France is Paris, and ünïcödé too."


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=AUTH, timeout=30)


def test_tokenize_a_prompt_and_back(server):
    tokenizer = server.engine.engine.tokenizer
    tokenized = post(server, "/tokenize", {"model": MODEL_NAME, "prompt": TEXT, "add_special_tokens": False}).json()
    assert tokenized == {"count": len(tokenizer.encode(TEXT, add_special_tokens=False)), "max_model_len": 1024,
                         "tokens": tokenizer.encode(TEXT, add_special_tokens=False)}
    assert post(server, "/detokenize", {"tokens": tokenized["tokens"]}).json() == {"prompt": TEXT}


def test_tokenized_messages_are_what_chat_completions_counts(server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    count = post(server, "/tokenize", {"messages": messages}).json()["count"]
    chat = post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": messages, "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == count


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "prompt"),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "truncate": 3}, 400, "truncate"),  # nothing silently ignored
    ("/tokenize", {"prompt": "a", "model": "gpt-9"}, 404, "model"),
    ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens"),
])
def test_bad_tokenize_requests_name_the_field(server, path, body, status, param):
    response = post(server, path, body)
    assert (response.status_code, response.json()["error"]["param"]) == (status, param), response.text
