"""SSE assembly and replay: a stored answer replays as a stream that re-assembles to it exactly, real streams
(corral's shape, split anyhow) assemble to the non-streaming answer, and unknown shapes are refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.cache_sse import NotReplayable, assemble_from_sse, replay_as_sse, replayable, sse_events

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

text = st.text(max_size=20)
finish = st.sampled_from(["stop", "length", "tool_calls"])
usage = st.fixed_dictionaries({"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99),
                               "total_tokens": st.integers(0, 200)})
top = st.lists(st.fixed_dictionaries({"token": text, "logprob": st.floats(-20, 0),
                                      "bytes": st.lists(st.integers(0, 255), max_size=4)}), max_size=2)
chat_logprobs = st.none() | st.fixed_dictionaries(
    {"content": st.lists(st.fixed_dictionaries({"token": text, "logprob": st.floats(-20, 0), "bytes":
                                                st.lists(st.integers(0, 255), max_size=4), "top_logprobs": top}),
                         max_size=3)})
tool_call = st.fixed_dictionaries({"id": text, "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": text, "arguments": text})})
message = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | text},
    optional={"tool_calls": st.none() | st.lists(tool_call, max_size=3), "reasoning_content": st.none() | text,
              "refusal": st.none()})
head = st.fixed_dictionaries({"id": text, "created": st.integers(0, 2**31), "model": text},
                             optional={"system_fingerprint": st.none() | text})


@st.composite
def chat_response(draw) -> dict:
    n = draw(st.integers(1, 3))
    choices = [draw(st.fixed_dictionaries({"index": st.just(i), "message": message, "finish_reason": finish},
                                          optional={"logprobs": chat_logprobs, "stop_reason": st.none() | text}))
               for i in range(n)]
    extra = draw(st.fixed_dictionaries({}, optional={"usage": usage}))
    return draw(head) | {"object": "chat.completion", "choices": choices} | extra


completion_logprobs = st.none() | st.integers(0, 4).flatmap(lambda k: st.fixed_dictionaries({
    "tokens": st.lists(text, min_size=k, max_size=k), "token_logprobs": st.lists(st.floats(-20, 0), min_size=k, max_size=k),
    "top_logprobs": st.lists(st.dictionaries(text, st.floats(-20, 0), max_size=2), min_size=k, max_size=k),
    "text_offset": st.lists(st.integers(0, 99), min_size=k, max_size=k)}))


@st.composite
def completion_response(draw) -> dict:
    n = draw(st.integers(1, 3))
    choices = [draw(st.fixed_dictionaries({"index": st.just(i), "text": text, "finish_reason": finish},
                                          optional={"logprobs": completion_logprobs, "stop_reason": st.none() | text}))
               for i in range(n)]
    extra = draw(st.fixed_dictionaries({}, optional={"usage": usage}))
    return draw(head) | {"object": "text_completion", "choices": choices} | extra


@settings(max_examples=300, deadline=None)
@given(chat_response())
def test_chat_replay_reassembles_exactly(response):
    assert assemble_from_sse(replay_as_sse(response, CHAT), CHAT) == response
    assert replayable(response, CHAT)


@settings(max_examples=300, deadline=None)
@given(completion_response(), st.integers(1, 50))
def test_completion_replay_reassembles_exactly_however_split(response, piece):
    stream = b"".join(replay_as_sse(response, COMPLETIONS))
    pieces = [stream[i : i + piece] for i in range(0, len(stream), piece)]
    assert assemble_from_sse(pieces, COMPLETIONS) == response


def chunk(choices, **extra) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "smol", "choices": choices}
    return f"data: {json.dumps(body | extra)}\n\n".encode()


# What corral serve sends for a chat stream with a tool call and include_usage (server/chat.py's shape).
CORRAL_TOOL_STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}]),
    chunk([{"index": 0, "delta": {"content": "Let me check. "}, "finish_reason": None, "stop_reason": None,
            "logprobs": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                  "function": {"name": "weather", "arguments": ""}}]},
            "finish_reason": None, "stop_reason": None, "logprobs": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]},
            "finish_reason": None, "stop_reason": None, "logprobs": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]},
            "finish_reason": "tool_calls", "stop_reason": None, "logprobs": None}]),
    chunk([], usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
    b"data: [DONE]\n\n",
]


def test_a_corral_tool_call_stream_assembles_to_the_non_streaming_answer():
    expected = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "smol",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me check. ", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            "finish_reason": "tool_calls", "stop_reason": None, "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }
    stream = b"".join(CORRAL_TOOL_STREAM).replace(b"\n\n", b"\r\n\r\n")  # CRLF framing too
    assert assemble_from_sse([stream[i : i + 13] for i in range(0, len(stream), 13)], CHAT) == expected
    assert replayable(expected, CHAT)


def test_interleaved_choices_and_openai_padding():
    stream = [
        chunk([{"index": 1, "delta": {"role": "assistant", "content": "B"}, "finish_reason": None}], obfuscation="x"),
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "A"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}], usage=None),
        chunk([{"index": 1, "delta": {}, "finish_reason": "length"}]),
        b"data: [DONE]\n\n",
    ]
    response = assemble_from_sse(stream, CHAT)
    assert [c["message"]["content"] for c in response["choices"]] == ["Aa", "B"]
    assert [c["finish_reason"] for c in response["choices"]] == ["stop", "length"]
    assert "usage" not in response and "obfuscation" not in response


def test_replay_byte_shape():
    response = {"id": "cmpl-1", "object": "chat.completion", "created": 7, "model": "smol",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    events = list(replay_as_sse(response, CHAT, include_usage=True))
    assert events[-1] == b"data: [DONE]\n\n"
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"\n") == 2 for e in events)
    bodies = [json.loads(e[6:]) for e in events[:-1]]
    assert {b["object"] for b in bodies} == {"chat.completion.chunk"}
    assert {(b["id"], b["created"], b["model"]) for b in bodies} == {("cmpl-1", 7, "smol")}
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert bodies[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"] == response["usage"]
    assert all("usage" not in b for b in bodies[:-1])
    without = list(replay_as_sse(response, CHAT, include_usage=False))
    assert len(without) == len(events) - 1 and b"usage" not in b"".join(without)
    text = list(replay_as_sse({**response, "object": "text_completion", "choices": [
        {"index": 0, "text": "Hi", "finish_reason": "stop", "logprobs": None}]}, COMPLETIONS))
    assert json.loads(text[0][6:])["choices"] == [{"index": 0, "text": "Hi", "finish_reason": "stop", "logprobs": None}]
    assert json.loads(text[0][6:])["object"] == "text_completion"


@pytest.mark.parametrize(("stream", "why"), [
    (CORRAL_TOOL_STREAM[:-1], "did not finish"),
    (CORRAL_TOOL_STREAM[:2] + [b'data: {"error": {"message": "backend died"}}\n\n', b"data: [DONE]\n\n"], "error"),
    (CORRAL_TOOL_STREAM[:2] + [b"data: [DONE]\n\n"], "never finished"),
    ([chunk([], prompt_logprobs=[None])] + CORRAL_TOOL_STREAM, "prompt_logprobs"),
    ([chunk([{"index": 0, "delta": {"audio": {}}, "finish_reason": "stop"}]), b"data: [DONE]\n\n"], "audio"),
    (CORRAL_TOOL_STREAM + [chunk([])], "after"),
    ([CORRAL_TOOL_STREAM[0][:20]], "inside an event"),
])
def test_streams_it_cannot_replay_are_refused(stream, why):
    with pytest.raises(NotReplayable, match=why):
        assemble_from_sse(stream, CHAT)


@pytest.mark.parametrize("change", [
    lambda r: r["choices"][0]["message"].update(audio={"id": "a"}),
    lambda r: r.update(prompt_logprobs=[None, {}]),  # vLLM's extra: not replayed, so not stored
    lambda r: r["choices"][0].update(finish_reason=None),
    lambda r: r.pop("object"),
    lambda r: r["choices"][0]["message"]["tool_calls"][0].update(index=0),
])
def test_responses_it_cannot_replay_are_not_replayable(change):
    response = assemble_from_sse(CORRAL_TOOL_STREAM, CHAT)
    assert replayable(response, CHAT)
    change(response)
    assert not replayable(response, CHAT)
    assert not replayable({"error": {"message": "x"}}, CHAT) and not replayable(None, CHAT)


def test_sse_events_joins_multiline_data():
    assert list(sse_events([b": comment\n\ndata: a\ndata: b\n\nevent: x\ndata:c\n\n"])) == ["a\nb", "c"]


json_value = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.sampled_from(["index", "delta", "text", "content", "tool_calls", "function",
                                               "arguments", "name", "id", "logprobs", "finish_reason", "role"]),
                              inner, max_size=4), max_leaves=12)
odd_chunk = st.fixed_dictionaries({"id": st.just("x")}, optional={"choices": json_value, "usage": json_value})


@settings(max_examples=400, deadline=None)
@given(st.lists(odd_chunk | json_value, max_size=4), st.sampled_from([CHAT, COMPLETIONS]))
def test_odd_streams_raise_only_not_replayable(chunks, path):
    stream = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    try:
        response = assemble_from_sse(stream, path)
    except NotReplayable:
        return
    assert isinstance(response, dict)
