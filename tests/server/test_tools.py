"""Tool calling, the request side: what the model is shown (the generic scheme, or the tools handed to a template
that knows them) and the grammar its calls must follow, checked token by token with llguidance."""

from __future__ import annotations

import json

import pytest

from corral.loader.default_model import default_model_path
from corral.loader.tokenizer import load_tokenizer
from corral.sample.params import StructuredOutputsParams
from corral.server.chat import chat_prompt_ids
from corral.server.errors import APIError
from corral.server.protocol import ChatCompletionRequest
from corral.server.tools import template_knows_tools, tool_call_grammar, tool_request_of
from corral.structured.llguidance_backend import LLGuidanceBackend

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
ECHO = {"type": "function", "function": {"name": "echo"}}  # no parameters: an empty object
CALL = '<tool_call>{"name":"add","arguments":{"a":2,"b":3}}</tool_call>'
# A template in the hermes format, as Qwen2.5's and Hermes's are (written here, not copied from either).
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Call them as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "user", "content": "2 + 3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_path())


@pytest.fixture(scope="module")
def backend(tokenizer):
    return LLGuidanceBackend(tokenizer.backend.to_str(), [tokenizer.eos_token_id])


def accepts(backend, tokenizer, grammar: str, text: str) -> bool:
    """Whether the grammar takes ``text`` token by token and may end there."""
    matcher = backend.compile(StructuredOutputsParams(grammar=grammar)).matcher()
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    return all(matcher._matcher.consume_token(i) for i in ids)


def test_required_takes_calls_that_match_a_schema_and_nothing_else(backend, tokenizer):
    grammar = tool_call_grammar(tool_request_of([ADD, ECHO], "required", None), native=False)
    assert accepts(backend, tokenizer, grammar, CALL)
    assert accepts(backend, tokenizer, grammar, CALL + '<tool_call>{"name":"echo","arguments":{}}</tool_call>')
    assert not accepts(backend, tokenizer, grammar, "The answer is 5.")
    assert not accepts(backend, tokenizer, grammar, CALL.replace("3", '"3"'))  # b is an integer
    assert not accepts(backend, tokenizer, grammar, CALL.replace("add", "sub"))
    assert not accepts(backend, tokenizer, grammar, '<tool_call>{"name":"add","arguments":{"a":2}}</tool_call>')


def test_parallel_tool_calls_false_takes_one_call(backend, tokenizer):
    grammar = tool_call_grammar(tool_request_of([ADD], "required", False), native=False)
    assert accepts(backend, tokenizer, grammar, CALL)
    assert not accepts(backend, tokenizer, grammar, CALL + CALL)


def test_a_named_function_is_the_only_call(backend, tokenizer):
    grammar = tool_call_grammar(tool_request_of([ADD, ECHO], {"type": "function", "function": {"name": "echo"}},
                                                None), native=False)
    assert accepts(backend, tokenizer, grammar, '<tool_call>{"name":"echo","arguments":{}}</tool_call>')
    assert not accepts(backend, tokenizer, grammar, CALL)


def test_auto_takes_a_call_or_a_plain_answer(backend, tokenizer):
    grammar = tool_call_grammar(tool_request_of([ADD], "auto", None), native=False)
    assert accepts(backend, tokenizer, grammar, CALL)
    assert accepts(backend, tokenizer, grammar, "The answer is 5.\nDone.")
    assert not accepts(backend, tokenizer, grammar, '<tool_call>{"name":"add"}</tool_call>')


def test_a_hermes_template_writes_calls_on_their_own_lines_and_auto_is_free(backend, tokenizer):
    assert template_knows_tools(HERMES_TEMPLATE) and not template_knows_tools(tokenizer.chat_template)
    grammar = tool_call_grammar(tool_request_of([ADD], "required", None), native=True)
    assert accepts(backend, tokenizer, grammar, CALL.replace("<tool_call>", "<tool_call>\n").replace("</", "\n</"))
    assert tool_call_grammar(tool_request_of([ADD], "auto", None), native=True) is None


def test_none_and_no_tools_make_no_tool_request():
    assert tool_request_of([ADD], "none", None) is None
    assert tool_request_of(None, None, None) is None
    with pytest.raises(APIError) as caught:
        tool_request_of(None, "required", None)
    assert caught.value.param == "tool_choice"


def prompt(tokenizer, messages, **fields) -> str:
    request = ChatCompletionRequest(model="m", messages=messages, **fields)
    tools = tool_request_of(request.tools, request.tool_choice, request.parallel_tool_calls)
    return tokenizer.decode(chat_prompt_ids(request, tokenizer, tools), skip_special_tokens=False)


def test_the_generic_scheme_describes_the_tools_and_writes_the_conversation_as_text(tokenizer):
    text = prompt(tokenizer, CONVERSATION, tools=[ADD], tool_choice="auto")
    assert '"name": "add"' in text.split("<|im_start|>user")[0]  # the tools, in the system turn
    assert '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response>" in text
    assert '"name": "add"' not in prompt(tokenizer, CONVERSATION[:1], tools=[ADD], tool_choice="none")


def test_a_template_that_knows_tools_gets_them_and_the_calls_as_objects(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "_chat_template", HERMES_TEMPLATE)
    text = prompt(tokenizer, CONVERSATION, tools=[ADD])
    assert json.dumps(ADD) in text  # handed to the template as ``tools``
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in text
    assert "<|im_start|>tool\n5<|im_end|>" in text  # the template's own way with results
