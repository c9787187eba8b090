"""Structured output through the official `openai` client: ``response_format`` json_schema output validates
against its schema (greedy and sampled, streamed and not, alone and beside free requests), a schema with one
valid instance yields exactly it, vLLM's guided_* extras constrain too, and the compile and mask metrics move."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import API_KEY, MODEL_NAME

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": ["string", "null"], "format": "email", "maxLength": 32},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["admin", "dev", "ops"]}, "maxItems": 3},
    },
    "required": ["name", "age", "email", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Invent a user of a web service and describe them."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def valid(text: str, schema: dict) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return value


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(client, temperature, stream):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=120, temperature=temperature, seed=7,
                  response_format=json_schema_format(PERSON))
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        text = choice.message.content
        assert choice.finish_reason == "stop"
    valid(text, PERSON)


def test_constrained_and_free_requests_share_batches(client, server):
    """Constrained rows and free rows in the same steps: each keeps its own constraint (or none)."""
    def constrained(seed):
        return client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=120, temperature=0.9, seed=seed, n=2,
            response_format=json_schema_format(PERSON),
        )

    def free(seed):
        return client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=40,
                                         temperature=0.9, seed=seed)

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(constrained, s) for s in range(4)] + [pool.submit(free, s) for s in range(4)]
        results = [j.result() for j in jobs]
    for result in results[:4]:
        assert len(result.choices) == 2
        for choice in result.choices:
            assert choice.finish_reason == "stop", choice.message.content
            valid(choice.message.content, PERSON)
    assert any(not r.choices[0].text.lstrip().startswith("{") for r in results[4:])  # free text stays free
    server.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_a_document_the_budget_would_cut_is_closed_and_says_length(client, stream):
    """A tree the model nests without end: max_tokens closes it (json_closer.py) instead of cutting it."""
    tree = {"$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                               "required": ["children"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
    kwargs = dict(model=MODEL_NAME, max_tokens=24, temperature=0.0, response_format=json_schema_format(tree),
                  messages=[{"role": "user", "content": "Write a tree as JSON, nested twenty levels deep."}])
    if stream:
        chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        text, finish = choice.message.content, [choice.finish_reason]
    assert finish == ["length"]
    valid(text, tree)


def test_a_schema_with_one_valid_instance_gives_exactly_it(client):
    schema = {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"], "additionalProperties": False}
    text = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=20, temperature=1.0, response_format=json_schema_format(schema),
    ).choices[0].message.content
    assert text == '{"ok":true}'


def test_json_object_gives_an_object(client):
    choice = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=300, temperature=0.0, response_format={"type": "json_object"}, frequency_penalty=1.5,
        messages=[{"role": "user", "content": 'Give the city and country of the Eiffel Tower as JSON with keys "city" and "country".'}],
    ).choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("extra, check", [
    ({"guided_choice": ["red", "green", "blue"]}, lambda text: text in ("red", "green", "blue")),
    ({"guided_regex": r"[0-9]{3}-[0-9]{4}"}, lambda text: len(text) == 8 and text[3] == "-"),
    ({"guided_json": PERSON}, lambda text: valid(text, PERSON) is not None),
    ({"structured_outputs": {"grammar": 'start: "yes" | "no"'}}, lambda text: text in ("yes", "no")),
], ids=["choice", "regex", "json", "grammar"])
def test_vllm_extras_constrain_completions(client, extra, check):
    result = client.completions.create(model=MODEL_NAME, prompt="Answer: ", max_tokens=60, temperature=0.8, seed=3,
                                       extra_body=extra)
    assert check(result.choices[0].text), result.choices[0].text


def test_compile_and_mask_times_are_exported(client, server):
    schema = {"type": "object", "properties": {"metric_probe": {"type": "integer"}}, "required": ["metric_probe"]}
    client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=20,
                                   response_format=json_schema_format(schema))
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    counts = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert counts["corral:structured_output_compile_seconds_count"] >= 1
    assert counts["corral:structured_output_mask_seconds_count"] >= 1


def test_the_engine_thread_never_compiles_a_grammar(server, client, monkeypatch):
    """The server hands the engine the grammar it compiled, so an LRU eviction in between cannot put a compile on
    the engine's step thread."""
    calls = []
    monkeypatch.setattr(server.engine.engine, "_compile_grammar", lambda params: calls.append(params))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=20,
                                           response_format=json_schema_format(schema))
    assert json.loads(reply.choices[0].message.content) in ({"ok": True}, {"ok": False})
    assert calls == []
