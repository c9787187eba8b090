"""Against a real ``corral serve``: a streamed answer, assembled, is the non-streaming answer to the same request
(so a cache filled from a stream serves what the replica would have said), and corral's answers are replayable
exactly. Between the two requests only what is fresh per request may differ: the response id, its creation time,
tool call ids, one corral difference noted in ``comparable``, and the logprob values: two identical requests
with two prompts and n=2 were seen to get logprobs differing in the first decimal for the same tokens, even
with ``--batch-invariant`` and without prefix caching (the texts identical), so they are compared as structure."""

from __future__ import annotations

import httpx
import pytest

from corral.gateway.cache_sse import assemble_from_sse, replay_as_sse, replayable

REQUESTS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 12,
                              "n": 2, "logprobs": True, "top_logprobs": 2}),
    pytest.param("/v1/chat/completions", {"messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
                              "max_tokens": 40, "tool_choice": "required",
                              "tools": [{"type": "function", "function": {
                                  "name": "weather", "parameters": {"type": "object", "properties": {
                                      "city": {"type": "string"}}, "required": ["city"]}}}]},
                 marks=pytest.mark.slow),  # about 50 s on 2 cores; CORRAL_TOOL_STREAM in test_cache_sse has its shape
    ("/v1/completions", {"prompt": ["Once upon a time", "The sky is"], "max_tokens": 10, "n": 2, "logprobs": 2,
                         "echo": True, "stop": ["\n"]}),
]


@pytest.fixture(scope="module")
def replica(corral_serve_module) -> str:
    return corral_serve_module("--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2), "--batch-invariant")


def floats_masked(value):
    if isinstance(value, float):
        return "float"
    if isinstance(value, dict):
        return {k: floats_masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [floats_masked(v) for v in value]
    return value


def comparable(response: dict) -> dict:
    """The response less what is fresh per request. corral streams a tool-call answer's content as "" where its
    non-streaming answer says null: the cache keeps what the stream said, so "" and null compare equal here."""
    choices = []
    for choice in response["choices"]:
        message = choice.get("message")
        if message and message.get("tool_calls"):
            calls = [{**call, "id": None} for call in message["tool_calls"]]
            message = {**message, "content": message["content"] or None, "tool_calls": calls}
            choice = {**choice, "message": message}
        choices.append(choice)
    return floats_masked({k: v for k, v in response.items() if k not in ("id", "created")} | {"choices": choices})


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=["chat-logprobs-n2", "chat-tool-call", "completions-echo"])
def test_a_streamed_answer_assembles_to_the_non_streaming_answer(replica, path, body):
    body = {"model": "default", "temperature": 0} | body
    with httpx.Client(base_url=replica, timeout=120) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        plain = client.post(path, json=body | {"model": model})
        assert plain.status_code == 200, plain.text
        with client.stream("POST", path, json=body | {"model": model, "stream": True,
                                                      "stream_options": {"include_usage": True}}) as streamed:
            assert streamed.status_code == 200
            chunks = list(streamed.iter_bytes())
    expected = plain.json()
    assembled = assemble_from_sse(chunks, path)
    assert comparable(assembled) == comparable(expected)
    assert replayable(expected, path) and replayable(assembled, path)
    assert assemble_from_sse(replay_as_sse(expected, path), path) == expected
    if "tools" in body:
        assert expected["choices"][0]["message"].get("tool_calls"), expected
