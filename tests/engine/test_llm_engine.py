"""LLMEngine: aborts at any point leave no blocks behind; other requests keep running."""

import pytest

from corral import LLM, SamplingParams
from corral.engine.request import RequestStatus
from corral.errors import InvalidRequestError


@pytest.fixture(scope="module")
def small_budget_llm(tiny_model_dir):
    """The tiny random Llama with a 64-token step budget: a ~300-token prompt takes five steps to prefill."""
    return LLM(tiny_model_dir, dtype="float32", quantization="none", max_model_len=512,
               kv_cache_memory=16 * 1024**2, max_num_batched_tokens=64)


def test_aborts_mid_prefill_and_mid_decode_free_every_block(small_budget_llm):
    """Aborting a request whose prompt is only partly computed, one that is decoding and one still waiting
    frees their blocks at once; the request left alone finishes."""
    engine = small_budget_llm.engine
    scheduler, kv = engine.core.scheduler, engine.core.kv_manager
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    long_prompt = "Tell me everything about the sea. " * 40
    engine.add_request("keep", "The sky is blue because", params)
    engine.add_request("abort-decode", "Numbers: 1 2 3", params)
    engine.add_request("abort-prefill", long_prompt, params)
    engine.add_request("abort-waiting", long_prompt + " again", params)
    engine.abort_request("abort-waiting")
    engine.step()
    engine.step()

    prefilling = scheduler.requests["abort-prefill"]
    assert prefilling.status is RequestStatus.RUNNING
    assert 0 < prefilling.num_computed_tokens < prefilling.num_prompt_tokens  # mid-prefill, for real
    assert len(kv.block_tables["abort-prefill"]) == kv.num_blocks_for(prefilling.num_computed_tokens)
    assert scheduler.requests["abort-decode"].num_output_tokens >= 2  # mid-decode
    assert "abort-waiting" not in scheduler.requests and "abort-waiting" not in kv.block_tables

    engine.abort_request("abort-prefill")
    engine.abort_request("abort-decode")
    engine.abort_request("never-existed")
    assert list(kv.block_tables) == ["keep"]
    assert kv.num_free_blocks == kv.num_blocks - len(kv.block_tables["keep"])
    finished = {}
    for _ in range(100):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        if not engine.has_unfinished_requests():
            break
    assert list(finished) == ["keep"]
    assert len(finished["keep"].outputs[0].token_ids) == 12
    assert kv.num_free_blocks == kv.num_blocks and not kv.block_tables and not scheduler.requests


def test_duplicate_request_id_is_rejected(small_budget_llm):
    engine = small_budget_llm.engine
    engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError):
        engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    engine.abort_request("dup")
    assert not engine.has_unfinished_requests()


def test_priority_preemption_keeps_greedy_output(tiny_model_dir):
    """A KV pool too small for two requests: the urgent one, added later, preempts the background one (not the
    other way round), and both still produce the greedy tokens each produces alone (batch-invariant mode)."""
    common = dict(dtype="float32", quantization="none", max_model_len=48, block_size=4, batch_invariant=True)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    prompts = {"background": "The history of the old lighthouse on the",
               "urgent": "Write one line about the weather today in"}
    roomy = LLM(tiny_model_dir, kv_cache_memory=4 * 1024**2, **common)
    alone = {name: roomy.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for name, p in prompts.items()}

    engine = LLM(tiny_model_dir, num_gpu_blocks_override=12, **common).engine  # 48 tokens; the two need 56
    scheduler = engine.core.scheduler
    engine.add_request("background", prompts["background"], params, priority=1)
    for _ in range(3):
        engine.step()
    background = scheduler.requests["background"]
    engine.add_request("urgent", prompts["urgent"], params, priority=0)
    urgent = scheduler.requests["urgent"]
    finished = {}
    for _ in range(200):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
        if not engine.has_unfinished_requests():
            break
    assert (background.num_preemptions, urgent.num_preemptions, scheduler.num_preemptions) == (1, 0, 1)
    assert list(finished) == ["urgent", "background"]
    assert finished == alone
    kv = engine.core.kv_manager
    assert kv.num_free_blocks == kv.num_blocks and not kv.block_tables
