"""Speculative decoding end to end on the default model: greedy output identical to plain decoding with both
proposers and several draft lengths, in mixed batches, under chunked prefill and preemption; KV blocks all
returned; seeded sampling reproducible; the counters in the offline result; bad configs refused."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.errors import ConfigError

TEXT = (
    "def area(width, height):\n    return width * height\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n"
)
PROMPTS = [
    "Repeat the following code exactly.\n" + TEXT + "\nRepeated:\n",
    "Once upon a time, in a small village by the sea,",
    "List the numbers from one to twenty: one, two, three,",
    "Summarize: The committee met on Tuesday. The committee approved the budget. The committee adjourned.",
    "The capital of France is",
    "Write the alphabet: a b c d e f",
]
# Quantized blocks and per-token attention: a token's logits do not depend on how many tokens the step
# checks, so greedy output with speculation must equal plain decoding exactly.
COMMON = dict(quantization="gguf", max_model_len=512, kv_cache_memory=32 * 1024**2, batch_invariant=True)


def greedy(max_tokens: int = 40, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


@pytest.fixture(scope="module")
def plain_outputs() -> list[list[int]]:
    llm = LLM(**COMMON)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy(), use_tqdm=False)]


def assert_no_leaks(llm: LLM) -> None:
    core = llm.engine.core
    assert not core.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == core.kv_manager.num_blocks
    for proposer in (core.runner.proposer, core.runner.fallback_proposer):
        if hasattr(proposer, "pool"):
            assert proposer.num_free_blocks == proposer.pool.num_blocks


@pytest.mark.parametrize(
    "speculative_config",
    [
        {"method": "ngram", "num_speculative_tokens": 1},
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3},
        {"method": "ngram", "num_speculative_tokens": 6, "adaptive": False},
        {"method": "draft_model", "num_speculative_tokens": 3, "draft_num_layers": 12, "adaptive": False},
        {"method": "ngram_draft", "num_speculative_tokens": 3, "draft_num_layers": 12, "adaptive": False},
    ],
    ids=["ngram-k1", "ngram-k3", "ngram-k6-fixed", "draft-k3", "ngram-then-draft-k3"],
)
def test_greedy_output_is_identical_with_speculation(speculative_config, plain_outputs):
    llm = LLM(**COMMON, speculative_config=speculative_config)
    outputs = llm.generate(PROMPTS, greedy(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain_outputs
    stats = llm.engine.core.scheduler.spec_decode_stats
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0
    assert stats.num_accepted_tokens < stats.num_draft_tokens  # some rejections were rolled back
    assert stats.num_emitted_tokens == stats.num_accepted_tokens + stats.num_drafts
    # the offline result carries each completion's share
    assert sum(o.outputs[0].num_draft_tokens for o in outputs) == stats.num_draft_tokens
    assert sum(o.outputs[0].num_accepted_tokens for o in outputs) == stats.num_accepted_tokens
    assert_no_leaks(llm)


def test_identical_under_chunked_prefill_and_preemption_with_many_rejections(plain_outputs):
    # 16 blocks of 16 tokens cannot hold twelve sequences of ~60-90 tokens plus drafts at once; a 48-token
    # budget chunks every prompt and trims drafts. A 4-layer draft model is mostly wrong.
    llm = LLM(
        **{**COMMON, "max_model_len": 256}, block_size=16, num_gpu_blocks_override=16, max_num_batched_tokens=48,
        speculative_config={"method": "draft_model", "num_speculative_tokens": 4, "draft_num_layers": 4,
                            "adaptive": False},
    )
    outputs = llm.generate(PROMPTS * 2, greedy(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == plain_outputs * 2
    core = llm.engine.core
    assert core.scheduler.num_preemptions > 0
    stats = core.scheduler.spec_decode_stats
    assert stats.num_draft_tokens - stats.num_accepted_tokens > 200  # many rejected drafts rolled back
    assert_no_leaks(llm)


def test_logprobs_and_stop_conditions_match_plain_decoding():
    plain = LLM(**COMMON)
    spec = LLM(**COMMON, speculative_config={"method": "ngram", "num_speculative_tokens": 4, "adaptive": False})
    params = greedy(48, logprobs=2, stop_token_ids=[198], min_tokens=3)  # 198 is "\n": often among the drafts
    want = plain.generate(PROMPTS, params, use_tqdm=False)
    got = spec.generate(PROMPTS, params, use_tqdm=False)
    assert sum(w.outputs[0].stop_reason == 198 for w in want) >= 2
    for w, g in zip(want, got, strict=True):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert g.outputs[0].finish_reason == w.outputs[0].finish_reason
        for w_pos, g_pos in zip(w.outputs[0].logprobs, g.outputs[0].logprobs, strict=True):
            assert w_pos.keys() == g_pos.keys()
            for token_id in w_pos:
                assert g_pos[token_id].logprob == pytest.approx(w_pos[token_id].logprob, abs=1e-5)
    assert_no_leaks(spec)


@pytest.mark.parametrize("method", ["ngram", "draft_model", "ngram_draft"])
def test_seeded_sampling_is_reproducible_with_speculation(method):
    config = {"method": method, "num_speculative_tokens": 3}
    if method != "ngram":
        config["draft_num_layers"] = 8
    llm = LLM(**COMMON, speculative_config=config)
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_tokens=32, presence_penalty=0.3)
    first = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    second = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[::-1], params, use_tqdm=False)][::-1]
    assert first == second
    assert llm.engine.core.scheduler.spec_decode_stats.num_draft_tokens > 0
    assert_no_leaks(llm)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"method": "medusa"}, "unsupported speculative method"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min"),
        ({"method": "ngram", "lookahead": 2}, "unknown speculative_config keys: lookahead"),
        ({"method": "draft_model", "draft_num_layers": 99}, "draft_num_layers must be in"),
        ({"method": "ngram", "model": "x"}, "apply to methods draft_model and ngram_draft"),
        ({"method": "draft_model", "prompt_lookup_max": 2}, "prompt_lookup_max apply to methods ngram and ngram_draft"),
        ({"method": "ngram", "quantization": "int8"}, "quantization .* applies to methods draft_model, ngram_draft and draft_head"),
        ({"method": "draft_head"}, "method draft_head needs model"),
        ({"method": "draft_head", "model": "x", "draft_num_layers": 2}, "draft_num_layers applies to .* not draft_head"),
        ({"method": "draft_head", "model": "x", "prompt_lookup_max": 2}, "prompt_lookup_max apply to .* not draft_head"),
    ],
)
def test_bad_speculative_config_is_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        LLM(**COMMON, speculative_config=config)
