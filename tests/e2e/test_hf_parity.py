"""Correctness against the reference: HF transformers on the same GGUF, fp32, greedy, token for token."""

from __future__ import annotations

import pytest
import torch

from corral import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In machine learning, overfitting means",
    "My favourite recipe for pancakes:",
    "The quick brown fox",
]
NUM_TOKENS = 64


@pytest.fixture(scope="module")
def hf_model(hf_default_model):
    return hf_default_model


def test_greedy_tokens_equal_hf(default_llm, hf_model):
    tokenizer = default_llm.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    # min_tokens suppresses EOS exactly as HF's min_new_tokens does.
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS)
    ours = [o.outputs[0].token_ids for o in default_llm.generate(prompt_ids, params, use_tqdm=False)]
    for ids, our_tokens in zip(prompt_ids, ours, strict=True):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS, do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )[0, len(ids):].tolist()
        assert our_tokens == ref


def test_first_step_logits_match_hf(default_llm, hf_model):
    runner = default_llm.engine.core.runner
    tokenizer = default_llm.get_tokenizer()
    captured = []
    original = runner.model.compute_logits

    def capture(hidden):
        logits = original(hidden)
        captured.append(logits)
        return logits

    runner.model.compute_logits = capture
    try:
        for prompt in PROMPTS[:4]:
            ids = tokenizer.encode(prompt)
            default_llm.generate(ids, SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
            with torch.no_grad():
                ref = hf_model(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(captured[-1][0], ref, atol=2e-4, rtol=1e-4)
    finally:
        runner.model.compute_logits = original
