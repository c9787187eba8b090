"""SamplingParams.prompt_logprobs: the raw logprobs of every prompt token after the first, computed across
prefill chunks and past prefix-cache hits, equal to one dense forward over the whole prompt."""

from __future__ import annotations

import pytest
import torch

from corral import LLM, SamplingParams
from corral.errors import InvalidSamplingParamsError
from corral.models.calibration import sequence_logits

TEXT = "The history of science shows that careful measurement and honest reporting move knowledge forward. "
NUM_TOP = 3


@pytest.fixture(scope="module")
def chunked_llm(tiny_model_dir):
    """The tiny random Llama with a 32-token step budget: a 100-token prompt spans four prefill chunks."""
    return LLM(tiny_model_dir, dtype="float32", quantization="none", max_model_len=512,
               kv_cache_memory=16 * 1024**2, max_num_batched_tokens=32)


def reference(llm: LLM, prompt_ids: list[int]) -> torch.Tensor:
    """[len(prompt_ids) - 1, vocab] logprobs of one dense forward: row p scores prompt token p + 1."""
    logits = sequence_logits(llm.engine.core.runner.model, prompt_ids)[:-1]
    return torch.log_softmax(logits.float(), dim=-1)


def assert_matches(prompt_logprobs, prompt_ids: list[int], expected: torch.Tensor, num_top: int) -> None:
    assert prompt_logprobs is not None and len(prompt_logprobs) == len(prompt_ids)
    assert prompt_logprobs[0] is None
    for position, (token_id, entry) in enumerate(zip(prompt_ids[1:], prompt_logprobs[1:], strict=True)):
        row = expected[position]
        assert entry[token_id].logprob == pytest.approx(row[token_id].item(), abs=1e-3), position
        # the rank up to tokens within the tolerance of the prompt token's logprob (near-ties may swap)
        logprob = row[token_id].item()
        assert int((row > logprob + 1e-3).sum()) + 1 <= entry[token_id].rank <= int((row > logprob - 1e-3).sum()) + 1
        top = row.topk(num_top).indices.tolist()
        for rank, top_id in enumerate(top, start=1):
            assert top_id in entry, (position, top_id)
            assert entry[top_id].logprob == pytest.approx(row[top_id].item(), abs=1e-3)
            if top_id != token_id:
                assert entry[top_id].rank == rank
        assert set(entry) <= {token_id, *top}


def prompt_of(llm: LLM, num_repeats: int, suffix: str = "") -> list[int]:
    return llm.get_tokenizer().encode(TEXT * num_repeats + suffix)


def test_prompt_logprobs_across_chunks_equal_one_dense_forward(chunked_llm):
    prompt_ids = prompt_of(chunked_llm, 7)
    assert len(prompt_ids) > 3 * 32  # at least four prefill chunks
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=NUM_TOP)
    output = chunked_llm.generate(prompt_ids, params, use_tqdm=False)[0]
    assert_matches(output.prompt_logprobs, prompt_ids, reference(chunked_llm, prompt_ids), NUM_TOP)
    entry = output.prompt_logprobs[1][prompt_ids[1]]
    assert entry.decoded_token == chunked_llm.get_tokenizer().decode([prompt_ids[1]], False)


def test_prompt_logprobs_zero_gives_the_prompt_token_alone(chunked_llm):
    prompt_ids = prompt_of(chunked_llm, 2)
    output = chunked_llm.generate(prompt_ids, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    assert [list(e) for e in output.prompt_logprobs[1:]] == [[t] for t in prompt_ids[1:]]
    assert_matches(output.prompt_logprobs, prompt_ids, reference(chunked_llm, prompt_ids), 0)


def test_prompt_logprobs_recompute_a_cached_prefix(tiny_model_dir):
    llm = LLM(tiny_model_dir, dtype="float32", quantization="none", max_model_len=512,
              kv_cache_memory=16 * 1024**2, max_num_batched_tokens=32, enable_prefix_caching=True)
    prompt_ids = prompt_of(llm, 7, "And then?")
    plain = SamplingParams(temperature=0.0, max_tokens=2)
    llm.generate(prompt_ids, plain, use_tqdm=False)  # caches the prompt's full blocks
    again = llm.generate(prompt_ids, plain, use_tqdm=False)[0]
    assert again.num_cached_tokens >= 96 and again.prompt_logprobs is None
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=NUM_TOP)
    output = llm.generate(prompt_ids, params, use_tqdm=False)[0]
    assert output.num_cached_tokens == 0
    assert_matches(output.prompt_logprobs, prompt_ids, reference(llm, prompt_ids), NUM_TOP)
    assert output.outputs[0].token_ids == again.outputs[0].token_ids


def test_a_request_without_prompt_logprobs_in_the_same_batch_is_unchanged(chunked_llm):
    asking, other = prompt_of(chunked_llm, 4), prompt_of(chunked_llm, 3, "Why?")
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    alone = chunked_llm.generate(other, greedy, use_tqdm=False)[0]
    with_logprobs = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, prompt_logprobs=1)
    both = chunked_llm.generate([asking, other], [with_logprobs, greedy], use_tqdm=False)
    assert both[1].prompt_logprobs is None
    assert both[1].outputs[0].token_ids == alone.outputs[0].token_ids
    assert_matches(both[0].prompt_logprobs, asking, reference(chunked_llm, asking), 1)
    assert both[0].outputs[0].token_ids == chunked_llm.generate(asking, greedy, use_tqdm=False)[0].outputs[0].token_ids


def test_n_completions_report_the_prompt_logprobs_once(chunked_llm):
    prompt_ids = prompt_of(chunked_llm, 2)
    params = SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=2, prompt_logprobs=2)
    output = chunked_llm.generate(prompt_ids, params, use_tqdm=False)[0]
    assert len(output.outputs) == 3
    assert_matches(output.prompt_logprobs, prompt_ids, reference(chunked_llm, prompt_ids), 2)


def test_a_one_token_prompt_has_only_the_leading_none(chunked_llm):
    output = chunked_llm.generate([5], SamplingParams(max_tokens=1, prompt_logprobs=2), use_tqdm=False)[0]
    assert output.prompt_logprobs == [None]


@pytest.mark.parametrize("value", [-1, 21, 1.5])
def test_out_of_range_prompt_logprobs_are_refused(value):
    with pytest.raises(InvalidSamplingParamsError, match="prompt_logprobs") as info:
        SamplingParams(prompt_logprobs=value)
    assert info.value.param == "prompt_logprobs"
