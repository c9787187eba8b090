"""Structured output in the offline engine: constrained and free requests in one batch, n > 1, speculative
decoding on and off giving the same greedy tokens under a grammar, nothing leaked, and bad combinations refused."""

from __future__ import annotations

import json

import pytest

from corral import LLM, SamplingParams
from corral.errors import InvalidSamplingParamsError
from corral.sample.params import StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
JSON = StructuredOutputsParams(json=json.dumps(SCHEMA))
TREE = {"$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                           "required": ["children"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
PROMPTS = ["A city as JSON: ", "Once upon a time", "Describe Paris in JSON: ", "The capital of France is"]
COMMON = dict(quantization="gguf", max_model_len=512, kv_cache_memory=32 * 1024**2, batch_invariant=True)


def check(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"city", "population"} and len(value["city"]) <= 16 and value["population"] >= 0


def assert_no_leaks(llm: LLM) -> None:
    core = llm.engine.core
    assert not core.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == core.kv_manager.num_blocks


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(**COMMON)


def test_constrained_and_free_rows_in_one_batch(llm):
    params = [
        SamplingParams(temperature=0.0, max_tokens=60, structured_outputs=JSON),
        SamplingParams(temperature=0.0, max_tokens=30),
        SamplingParams(temperature=0.9, seed=1, n=3, max_tokens=60, structured_outputs=JSON),
        SamplingParams(temperature=0.9, seed=2, max_tokens=30),
    ]
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for output in (outputs[0], outputs[2]):
        for completion in output.outputs:
            assert completion.finish_reason == "stop"
            check(completion.text)
    assert len(outputs[2].outputs) == 3
    assert not outputs[1].outputs[0].text.startswith("{")
    assert_no_leaks(llm)


@pytest.mark.parametrize("speculative_config", [
    {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False},
    {"method": "draft_model", "num_speculative_tokens": 3, "draft_num_layers": 12, "adaptive": False},
], ids=["ngram", "draft_model"])
def test_speculative_decoding_on_and_off_give_the_same_greedy_tokens_under_a_grammar(llm, speculative_config):
    """Constrained requests get drafts too, each checked against the grammar walked through the drafts before it."""
    # The "Count" prompt's grammar allows only what the model would not write there: drafts the check took
    # without the grammar's mask would show. The last one repeats itself, so n-gram drafts get accepted.
    prompts = [*PROMPTS, "Count: 1, 2, 3, 4, 5, 6,", "Say it again and again:"]
    params = [SamplingParams(temperature=0.0, max_tokens=60, structured_outputs=JSON if i % 2 == 0 else None)
              for i in range(len(PROMPTS))]
    params.append(SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=StructuredOutputsParams(
        regex="( [XYZ]| 1| 2){40}")))
    params.append(SamplingParams(temperature=0.0, max_tokens=60, structured_outputs=StructuredOutputsParams(
        regex="( I like (green|red) apples\\.){1,20}")))
    # A tree nests without end: the budget closes it (json_closer.py), draft rows included.
    prompts.append("A tree as JSON, nested ten levels deep: ")
    params.append(SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=StructuredOutputsParams(
        json=json.dumps(TREE))))
    plain_outputs = llm.generate(prompts, params, use_tqdm=False)
    assert plain_outputs[-1].outputs[0].finish_reason == "length"
    json.loads(plain_outputs[-1].outputs[0].text)
    plain = [o.outputs[0].token_ids for o in plain_outputs]
    speculative = LLM(**COMMON, speculative_config=speculative_config)
    outputs = speculative.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain
    constrained = [o.outputs[0] for o, p in zip(outputs, params, strict=True) if p.structured_outputs is not None]
    assert sum(c.num_accepted_tokens for c in constrained) > 0
    assert_no_leaks(speculative)


def test_a_spec_takes_exactly_one_kind_and_no_min_tokens():
    with pytest.raises(InvalidSamplingParamsError, match="exactly one"):
        StructuredOutputsParams(json="{}", regex="a")
    with pytest.raises(InvalidSamplingParamsError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(InvalidSamplingParamsError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured_outputs=StructuredOutputsParams(regex="a+"))
    with pytest.raises(InvalidSamplingParamsError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, structured_outputs=StructuredOutputsParams(regex="a+"))
    with pytest.raises(InvalidSamplingParamsError, match="list of strings"):
        StructuredOutputsParams(choice="yes")
    with pytest.raises(InvalidSamplingParamsError, match="true or false"):
        StructuredOutputsParams(json_object="false")
