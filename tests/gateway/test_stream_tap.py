"""The stream tap and the answer it reads (stream_tap.py, usage.py), on the bytes corral serve sends: events are
relayed whole however the upstream split them, the usage chunk the gateway asked for is dropped for a client that
did not ask and kept for one that did, ``[DONE]`` waits for the request to be settled, and a streamed answer's
output and usage are those of the same answer as one body (so their audit hashes agree)."""

from __future__ import annotations

import asyncio
import json

import pytest

from corral.gateway.audit import output_sha256
from corral.gateway.stream_tap import StreamTap
from corral.gateway.usage import (
    Answer,
    answer_of_body,
    ask_for_usage,
    asked_for_usage,
    estimated_prompt_tokens,
)


def event(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "tiny"}
USAGE = {"prompt_tokens": 31, "completion_tokens": 5, "total_tokens": 36}
CHAT_STREAM = [
    event({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    event({**HEAD, "choices": [{"index": 0, "delta": {"content": "It is"}, "finish_reason": None}]}),
    event({**HEAD, "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"ci'}}]},
        "finish_reason": None}]}),
    event({**HEAD, "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": 'ty": "Lyon"}'}}]}, "finish_reason": "tool_calls"}]}),
    event({**HEAD, "choices": [], "usage": USAGE}),
    event("[DONE]"),
]
CHAT_BODY = {**HEAD, "object": "chat.completion", "usage": USAGE, "choices": [{"index": 0, "finish_reason": "tool_calls",
             "message": {"role": "assistant", "content": "It is", "tool_calls": [
                 {"id": "call_1", "type": "function",
                  "function": {"name": "weather", "arguments": '{"city": "Lyon"}'}}]}}]}


class Settled:
    """Records what the tap settled, and answers what ``settle`` would."""

    def __init__(self, problem: str | None = None):
        self.calls: list[tuple[int, bool]] = []
        self.problem = problem

    async def __call__(self, status: int, answer: Answer, complete: bool) -> str | None:
        self.calls.append((status, complete))
        return self.problem


def split_anyhow(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start:start + size])
        start += size
    return [*chunks, data[start:]]


@pytest.mark.parametrize("sizes", [[], [1] * 40, [7, 300, 2, 90], [len(b"".join(CHAT_STREAM)) - 3]])
def test_events_are_relayed_whole_and_done_waits_for_the_settlement(sizes):
    settled = Settled()
    tap = StreamTap(settled, parse_all=True, strip_usage=True)
    relayed = b""
    for chunk in split_anyhow(b"".join(CHAT_STREAM), sizes):
        out = tap.feed(chunk)
        assert out == b"" or out.endswith(b"\n\n")  # never part of an event
        relayed += out
    assert relayed == b"".join(CHAT_STREAM[:4])  # the usage chunk dropped, [DONE] held
    assert tap.done and settled.calls == []
    assert asyncio.run(tap.finish()) == event("[DONE]") and settled.calls == [(200, True)]
    assert (tap.answer.prompt_tokens, tap.answer.completion_tokens) == (31, 5)
    assert tap.flush() == b""


def test_a_client_that_asked_for_the_usage_gets_it_and_crlf_events_are_split_too():
    stream = b"".join(CHAT_STREAM).replace(b"\n", b"\r\n")
    tap = StreamTap(Settled(), parse_all=False, strip_usage=False)
    assert tap.feed(stream) == stream[:-len(b"data: [DONE]\r\n\r\n")]
    assert tap.answer.completion_tokens == 5 and tap.done


def test_a_usage_riding_on_a_chunk_with_choices_is_removed_from_that_chunk_only():
    chunk = {**HEAD, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}], "usage": USAGE}
    out = StreamTap(Settled(), parse_all=False, strip_usage=True).feed(event(chunk))
    assert json.loads(out.removeprefix(b"data: ")) == {k: v for k, v in chunk.items() if k != "usage"}


def test_a_stream_cut_short_is_settled_incomplete_and_a_failed_record_replaces_done():
    settled = Settled()
    tap = StreamTap(settled, parse_all=True, strip_usage=True)
    tap.feed(b"".join(CHAT_STREAM[:2]) + CHAT_STREAM[2][:10])
    assert tap.flush() == CHAT_STREAM[2][:10]
    asyncio.run(tap.close(499))
    assert settled.calls == [(499, False)] and tap.answer.tokens_used(7) == (7, 2)  # estimate + events seen
    failing = StreamTap(Settled("disk full"), parse_all=True, strip_usage=True)
    failing.feed(b"".join(CHAT_STREAM))
    last = asyncio.run(failing.finish())
    assert b'"code": "audit_unavailable"' in last and last.endswith(b"data: [DONE]\n\n")


def test_a_streamed_answer_and_the_same_answer_as_a_body_have_one_output_and_usage():
    tap = StreamTap(Settled(), parse_all=True, strip_usage=False)
    tap.feed(b"".join(CHAT_STREAM))
    body = answer_of_body(json.dumps(CHAT_BODY).encode())
    expected = {"content": "It is", "tool_calls": [{"name": "weather", "arguments": '{"city": "Lyon"}'}]}
    assert tap.answer.output == body.output == expected
    assert output_sha256(tap.answer.output) == output_sha256(body.output)
    assert (body.prompt_tokens, body.completion_tokens) == (31, 5)
    several = answer_of_body(json.dumps({"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}).encode())
    assert several.output == ["a", "b"] and answer_of_body(b"not json").output is None


def test_usage_is_asked_for_without_losing_the_clients_stream_options():
    body = {"prompt": "abcdefghij", "stream": True, "stream_options": {"continuous_usage_stats": False}}
    asked = ask_for_usage(body)
    assert asked["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert not asked_for_usage(body) and asked_for_usage(asked) and ask_for_usage(asked) is asked
    assert estimated_prompt_tokens(body) == 2
