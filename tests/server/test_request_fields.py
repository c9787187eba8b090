"""No request field is silently ignored: every field of OpenAI's completions and chat APIs is either served,
accepted because it changes nothing here, or refused with a 400 that names it (``param``)."""

from __future__ import annotations

import httpx
import openai
import pytest

from corral.server.protocol import (
    DEPRECATED_FIELDS,
    NO_EFFECT_FIELDS,
    NOT_IMPLEMENTED_FIELDS,
    STRUCTURED_OUTPUT_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
)

from .conftest import API_KEY, MODEL_NAME

AUTH = {"Authorization": f"Bearer {API_KEY}"}
COMPLETION = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}

# The request fields of OpenAI's API reference (2026-12), completions and chat completions.
OPENAI_COMPLETION_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
}
OPENAI_CHAT_FIELDS = {
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
}


@pytest.mark.parametrize("model, fields", [(CompletionRequest, OPENAI_COMPLETION_FIELDS),
                                           (ChatCompletionRequest, OPENAI_CHAT_FIELDS)])
def test_every_openai_field_is_served_accepted_or_refused_by_name(model, fields):
    unclassified = (fields - set(model.model_fields) - NO_EFFECT_FIELDS - set(NOT_IMPLEMENTED_FIELDS)
                    - STRUCTURED_OUTPUT_FIELDS - set(DEPRECATED_FIELDS))
    assert not unclassified


REFUSED = [
    ("/v1/chat/completions", {**CHAT, "tool_choice": "auto"}, "tool_choice"),  # no tools
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {
        "name": "sub"}}}, "tool_choice"),  # not one of the tools
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": "any"}, "tool_choice"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL, TOOL]}, "tools"),  # one name twice
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "bogus"}}}}}],
        "tool_choice": "required"}, "tools"),  # a schema llguidance refuses
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": "required",
                              "response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {**CHAT, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ("/v1/chat/completions", {**CHAT, "functions": [TOOL["function"]]}, "functions"),  # deprecated: use tools
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}]}, "messages"),
    ("/v1/completions", {**COMPLETION, "tools": [TOOL]}, "tools"),  # chat only
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),  # no schema
    ("/v1/chat/completions", {**CHAT, "guided_regex": "a+", "guided_choice": ["a"]}, "guided_regex"),  # two at once
    ("/v1/chat/completions", {**CHAT, "guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ("/v1/chat/completions", {**CHAT, "structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ("/v1/chat/completions", {**CHAT, "structured_outputs": {"choice": "yes"}}, "structured_outputs"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": "false"}}}, "response_format"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ("/v1/chat/completions", {**CHAT, "temprature": 0.2}, "temprature"),  # a typo is not a no-op
    ("/v1/chat/completions", {**CHAT, "guided_json": {"type": "array", "uniqueItems": True}}, "guided_json"),
    ("/v1/completions", {**COMPLETION, "guided_regex": "(("}, "guided_regex"),
    ("/v1/completions", {**COMPLETION, "guided_grammar": "start: ("}, "guided_grammar"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"42": 101}}, "logit_bias"),  # out of [-100, 100]
    ("/v1/completions", {**COMPLETION, "logit_bias": {"the": 5}}, "logit_bias"),  # not a token id
    ("/v1/completions", {**COMPLETION, "logit_bias": {"99999999": 5}}, "logit_bias"),  # outside the vocabulary
    ("/v1/completions", {**COMPLETION, "suffix": " world"}, "suffix"),
    ("/v1/completions", {**COMPLETION, "allowed_token_ids": [10**6]}, "allowed_token_ids"),  # outside the vocabulary
    ("/v1/completions", {**COMPLETION, "allowed_token_ids": []}, "allowed_token_ids"),
    ("/v1/chat/completions", {**CHAT, "bad_words": ["  "]}, "bad_words"),
    ("/v1/completions", {**COMPLETION, "best_of": 3}, "best_of"),
    ("/v1/completions", {**COMPLETION, "repetition_penalty": 0}, "repetition_penalty"),  # was taken as 1.0
]


@pytest.mark.parametrize("path, body, field", REFUSED, ids=[r[2] for r in REFUSED])
def test_fields_that_would_be_ignored_are_refused_by_name(server, path, body, field):
    response = httpx.post(server.base_url + path, json=body, headers=AUTH, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert field in error["message"]
    if field != "repetition_penalty":  # a range error from SamplingParams, which names it in the message
        assert error["param"] == field


ACCEPTED = [
    ("/v1/chat/completions", {**CHAT, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}}),
    ("/v1/chat/completions", {**CHAT, "metadata": {"team": "a"}, "store": False, "user": "u1",
                              "parallel_tool_calls": True, "service_tier": "auto", "modalities": ["text"]}),
    ("/v1/completions", {**COMPLETION, "logit_bias": {}, "suffix": None, "best_of": 1}),
]


@pytest.mark.parametrize("path, body", ACCEPTED, ids=["off-values", "no-effect-fields", "completion-off-values"])
def test_off_values_and_fields_without_effect_are_accepted(server, path, body):
    response = httpx.post(server.base_url + path, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text


def test_the_openai_client_sees_a_bad_request_naming_tool_choice(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=CHAT["messages"], tools=[TOOL], max_tokens=2,
                                       tool_choice={"type": "function", "function": {"name": "sub"}})
    assert caught.value.param == "tool_choice"
