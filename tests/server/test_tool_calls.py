"""Tool calling through the official `openai` client on the default model (whose template knows no tools, so the
generic scheme): ``required`` and a named function always yield calls whose arguments validate against their
function's schema (greedy and sampled, streamed and not, n > 1), ``auto`` yields a call or an answer, ``none`` never
a call, and a conversation carrying calls and tool results goes back in."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import API_KEY, MODEL_NAME

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris? And what is 2 + 3?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def assert_valid_calls(calls: list[dict], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"]["name"] in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def streamed(chunks) -> tuple[str | None, list[dict], list[str]]:
    """(content, calls, finish reasons) of a streamed answer, the calls put together as OpenAI's clients do:
    id, type and name from a call's first delta, its arguments from every delta of its index."""
    content, calls, finishes = "", {}, []
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                if delta.id is not None:
                    assert delta.index not in calls, "a call's id and name come once"
                    calls[delta.index] = {"id": delta.id, "type": delta.type,
                                          "function": {"name": delta.function.name, "arguments": ""}}
                calls[delta.index]["function"]["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return content or None, [calls[i] for i in sorted(calls)], finishes


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (1.0, 1), (1.0, 2)])
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}],
                         ids=["required", "named"])
def test_required_and_named_choices_always_yield_valid_calls(client, tool_choice, temperature, seed, stream):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, max_tokens=120,
                  temperature=temperature, seed=seed)
    names = {"add"} if isinstance(tool_choice, dict) else set(SCHEMAS)
    if stream:
        content, calls, finishes = streamed(client.chat.completions.create(stream=True, **kwargs))
        assert finishes == ["tool_calls"]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        content, calls = choice.message.content, [c.model_dump() for c in choice.message.tool_calls or []]
        assert choice.finish_reason == "tool_calls"
    assert content is None
    assert_valid_calls(calls, names)


def test_a_streamed_answer_adds_up_to_the_whole_one(client):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=120,
                  temperature=0.0)
    whole = client.chat.completions.create(**kwargs).choices[0].message
    content, calls, _ = streamed(client.chat.completions.create(stream=True, **kwargs))
    assert content == whole.content
    assert [c["function"] for c in calls] == [c.function.model_dump() for c in whole.tool_calls]


def test_every_choice_of_n_is_a_valid_call(client):
    response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                              max_tokens=120, temperature=1.0, seed=5, n=3)
    assert len(response.choices) == 3
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls([c.model_dump() for c in choice.message.tool_calls], set(SCHEMAS))


@pytest.mark.parametrize("seed", range(4))
def test_auto_yields_a_valid_call_or_a_plain_answer(client, seed):
    choice = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice="auto",
                                            max_tokens=60, temperature=1.0, seed=seed).choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls([c.model_dump() for c in choice.message.tool_calls], set(SCHEMAS))
    else:
        assert choice.message.content and "<tool_call>" not in choice.message.content
        assert choice.finish_reason in ("stop", "length")


def test_none_answers_in_text(client):
    choice = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                            max_tokens=20, temperature=0.0).choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_conversation_with_calls_and_results_goes_back_in(client):
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    choice = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, max_tokens=20,
                                            temperature=0.0, tool_choice="none").choices[0]
    assert choice.message.content
