"""Against a real ``corral serve`` (``--batch-invariant``, so two runs of a request agree to the last logprob): a
streamed answer, assembled, is the non-streaming answer to the same request (so a cache filled from a stream
serves what the replica would have said), and corral's answers are replayable. Only what is fresh per request
differs: the response id, its creation time, tool call ids, and one corral difference noted below."""

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


def without_ids(response: dict) -> dict:
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
    return {k: v for k, v in response.items() if k not in ("id", "created")} | {"choices": choices}


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
    assert without_ids(assembled) == without_ids(expected)
    assert replayable(expected, path) and replayable(assembled, path)
    assert without_ids(assemble_from_sse(replay_as_sse(expected, path), path)) == without_ids(expected)
    if "tools" in body:
        assert expected["choices"][0]["message"].get("tool_calls"), expected
