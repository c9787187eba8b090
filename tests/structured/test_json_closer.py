"""Closing a JSON document before ``max_tokens``: the scan of compact JSON, and outputs of schemas that let the
default model go on without end (nesting, open objects, long arrays) parsing and validating at any budget."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import LLM, SamplingParams
from corral.sample.params import StructuredOutputsParams
from corral.structured.json_closer import JsonScan

SCHEMAS = {case["name"]: case["schema"] for case in json.loads((Path(__file__).parent / "schemas.json").read_text())}
# The model does not finish these by itself within 384 tokens (docs/structured-output.md).
UNBOUNDED = ["recursive_tree", "deeply_nested", "tool_call", "array_of_objects"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@given(json_values)
def test_a_whole_document_leaves_nothing_open(value):
    assert JsonScan().after(compact(value)) == JsonScan()


@given(json_values, st.data())
def test_scanning_in_pieces_equals_scanning_at_once(value, data):
    text = compact(value)
    cut = data.draw(st.integers(0, len(text)))
    assert JsonScan().after(text[:cut]).after(text[cut:]) == JsonScan().after(text)


@pytest.mark.parametrize(("prefix", "expected"), [
    (b'{"a":[1,{"b":"x', JsonScan(depth=3, in_string=True)),
    (b'{"a":"q\\', JsonScan(depth=1, in_string=True, escaped=True)),
    (b'{"a":"q\\"]}', JsonScan(depth=1, in_string=True)),  # an escaped quote does not end the string
    (b'{"a":"}]{["', JsonScan(depth=1)),  # brackets inside a string do not count
    (b'[[],{}', JsonScan(depth=1)),
])
def test_scan_examples(prefix, expected):
    scan = JsonScan().after(prefix)
    assert scan == expected
    assert scan.num_open == expected.depth + expected.in_string


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(quantization="gguf", max_model_len=1024, kv_cache_memory=64 * 1024**2)


def schema_prompt(llm: LLM, schema: dict) -> str:
    message = f"Reply with JSON matching this schema: {json.dumps(schema)}"
    return llm.get_tokenizer().apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True)


@pytest.mark.parametrize("max_tokens", [24, 48, 96])
def test_outputs_the_budget_would_cut_are_closed_and_validate(llm, max_tokens):
    prompts, params = [], []
    for name in UNBOUNDED:
        for seed in range(3):
            prompts.append(schema_prompt(llm, SCHEMAS[name]))
            params.append(SamplingParams(temperature=0.7, seed=seed, max_tokens=max_tokens,
                                         structured_outputs=StructuredOutputsParams(json=json.dumps(SCHEMAS[name]))))
    outputs = llm.generate(prompts, params, use_tqdm=False)
    closed = 0
    for output, name in zip(outputs, [n for n in UNBOUNDED for _ in range(3)], strict=True):
        completion = output.outputs[0]
        assert len(completion.token_ids) <= max_tokens
        jsonschema.validate(json.loads(completion.text), SCHEMAS[name])
        closed += completion.finish_reason == "length"
    assert closed > 0


def test_json_object_is_closed_too(llm):
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=32,
                            structured_outputs=StructuredOutputsParams(json_object=True))
    completion = llm.generate(["Write a big nested JSON config:"], params, use_tqdm=False)[0].outputs[0]
    assert isinstance(json.loads(completion.text), dict)


def test_a_document_that_ends_by_itself_stops_as_usual(llm):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    params = SamplingParams(temperature=0.0, max_tokens=64,
                            structured_outputs=StructuredOutputsParams(json=json.dumps(schema)))
    completion = llm.generate([schema_prompt(llm, schema)], params, use_tqdm=False)[0].outputs[0]
    assert completion.finish_reason == "stop"
    assert isinstance(json.loads(completion.text)["ok"], bool)
