"""Tool calling, the output side: ``<tool_call>`` blocks become calls and the text around them content, and a
streamed answer, cut into deltas anywhere, adds up to the whole one."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from corral.server.tool_calls import ToolCallParser, parse_tool_calls

TEXTS = [
    "Hello there",
    '<tool_call>{"name":"f","arguments":{"a":1}}</tool_call>',
    '<tool_call>{"name":"f","arguments":{"a":1}}</tool_call>\n<tool_call>{"name":"g","arguments":{}}</tool_call>',
    'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": "x}</tool"}}\n</tool_call>\nDone.',
    "<tool_call>not json</tool_call> tail",
    '<tool_call>{"name":"f","arguments":{"a":',  # cut by max_tokens
    '<tool_call>{"arguments":{"a":1},"name":"f"}</tool_call>',  # arguments first: sent whole at the end
    '<tool_call>{"name":"f","arguments":"{\\"a\\":1}"}</tool_call>',  # arguments as a JSON string
    "a < b and <tool",
    "  ",
]


def test_calls_and_content_of_whole_answers():
    assert parse_tool_calls("Hello there") == ("Hello there", [])
    content, calls = parse_tool_calls(TEXTS[3])
    assert content == "Sure.\nDone."
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"a": "x}</tool"}')]
    content, calls = parse_tool_calls(TEXTS[2])
    assert content is None and [(c.name, c.arguments) for c in calls] == [("f", '{"a":1}'), ("g", "{}")]
    assert len({c.id for c in calls}) == 2
    assert parse_tool_calls(TEXTS[4]) == ("<tool_call>not json</tool_call> tail", [])
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[5])[1]] == [("f", '{"a":')]
    assert [(c.name, c.arguments) for c in parse_tool_calls(TEXTS[7])[1]] == [("f", '{"a":1}')]
    assert parse_tool_calls(TEXTS[8]) == ("a < b and <tool", [])
    content, calls = parse_tool_calls(TEXTS[1] + "\n  Done.\n")
    assert content == "Done." and len(calls) == 1


def assembled(deltas: list[dict]) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = "", {}
    for delta in deltas:
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:
                assert call["index"] not in calls
                calls[call["index"]] = [call["function"]["name"], ""]
            calls[call["index"]][1] += call["function"]["arguments"]
    return content or None, [tuple(calls[i]) for i in sorted(calls)]


@given(text=st.sampled_from(TEXTS), cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=12))
def test_streamed_deltas_add_up_to_the_whole_answer(text, cuts):
    parser, deltas, start = ToolCallParser(), [], 0
    for end in sorted(set(cuts)):
        deltas += parser.feed(text[start:end])
        start = max(start, end)
    deltas += parser.feed(text[start:]) + parser.finish()
    content, calls = parse_tool_calls(text)
    assert assembled(deltas) == (content, [(c.name, c.arguments) for c in calls])


def test_arguments_stream_before_the_call_closes():
    parser = ToolCallParser()
    head = parser.feed('<tool_call>{"name":"f","arguments":{"city":"Par')
    assert head[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert head[1]["tool_calls"][0]["function"] == {"arguments": '{"city":"Par'}
    rest = parser.feed('is"}}</tool_call>') + parser.finish()
    assert [d["tool_calls"][0]["function"]["arguments"] for d in rest] == ['is"}']
    assert json.loads(parser.calls[0].arguments) == {"city": "Paris"}
