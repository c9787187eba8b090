"""Allowed and banned tokens, end to end through the engine: ``allowed_token_ids`` (alone, under a grammar, with
speculative decoding) yields only those tokens, and ``bad_words`` never lets a word be spelled out, though it
would be without them. Plus the bitmask and the bad-word ban at their edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corral import LLM, SamplingParams
from corral.engine.request import Request
from corral.engine.token_masks import token_bitmask
from corral.errors import InvalidRequestError, InvalidSamplingParamsError
from corral.sample.params import StructuredOutputsParams

COMMON = dict(quantization="gguf", max_model_len=512, kv_cache_memory=32 * 1024**2, batch_invariant=True)
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(**COMMON)


def test_token_bitmask_sets_exactly_the_given_bits():
    ids = (0, 5, 31, 32, 49151)
    bits = np.unpackbits(token_bitmask(ids, 49152).numpy().view(np.uint8), bitorder="little")
    assert set(np.flatnonzero(bits)) == set(ids)
    assert token_bitmask((3, 70), 64).shape == torch.Size([2])  # ids past the vocabulary are dropped


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "ngram"])
def test_only_allowed_tokens_are_generated(llm, speculative):
    engine = LLM(**COMMON, speculative_config={"method": "ngram", "num_speculative_tokens": 3}) if speculative else llm
    tokenizer = engine.engine.tokenizer
    allowed = tuple(sorted({*tokenizer.encode(" yes no maybe", add_special_tokens=False), 13}))
    params = [SamplingParams(temperature=t, seed=3, max_tokens=24, allowed_token_ids=allowed) for t in (0.0, 1.0)]
    for output in engine.generate(PROMPTS[:2], params, use_tqdm=False):
        completion = output.outputs[0]
        assert len(completion.token_ids) == 24 and set(completion.token_ids) <= set(allowed)


def test_allowed_tokens_narrow_a_grammar(llm):
    tokenizer = llm.engine.tokenizer
    allowed = tuple(tokenizer.encode("no", add_special_tokens=False)) + (tokenizer.eos_token_id,)
    params = SamplingParams(temperature=0.0, max_tokens=8, allowed_token_ids=allowed,
                            structured_outputs=StructuredOutputsParams(choice=("yes", "no")))
    assert llm.generate(["Is the sky green? Answer:"], params, use_tqdm=False)[0].outputs[0].text == "no"


def test_a_bad_word_is_never_spelled_out(llm):
    free = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=40), use_tqdm=False)
    words = [max(o.outputs[0].text.split(), key=len) for o in free]  # a word each greedy answer does write
    banned = llm.generate(PROMPTS, [SamplingParams(temperature=0.0, max_tokens=40, bad_words=(w,)) for w in words],
                          use_tqdm=False)
    tokenizer = llm.engine.tokenizer
    for word, before, after in zip(words, free, banned, strict=True):
        assert word in before.outputs[0].text
        ids = after.outputs[0].token_ids
        for spelling in (tokenizer.encode(word, add_special_tokens=False),
                         tokenizer.encode(" " + word, add_special_tokens=False)):
            assert not any(ids[i : i + len(spelling)] == spelling for i in range(len(ids))), (word, after)


def test_the_ban_of_a_bad_words_last_token_follows_its_other_tokens():
    request = Request("r", [1, 2], SamplingParams(max_tokens=10), bad_words_token_ids=((7,), (4, 5, 6)))
    assert request.banned_token_ids() == (7,)
    request.append_token(4)
    assert request.banned_token_ids() == (7,)
    assert request.banned_token_ids(pending=[5]) == (7, 6)  # a draft that completes the prefix
    request.append_token(5)
    assert request.banned_token_ids() == (7, 6)
    request.append_token(9)
    assert request.banned_token_ids() == (7,)


def test_bad_values_are_refused_by_name(llm):
    for kwargs, param in [({"allowed_token_ids": ()}, "allowed_token_ids"), ({"allowed_token_ids": (-1,)},
                          "allowed_token_ids"), ({"bad_words": ("",)}, "bad_words"), ({"bad_words": "word"}, "bad_words")]:
        with pytest.raises(InvalidSamplingParamsError) as caught:
            SamplingParams(**kwargs)
        assert caught.value.param == param
    with pytest.raises(InvalidRequestError) as caught:
        llm.generate(["Hi"], SamplingParams(allowed_token_ids=(10**6,)), use_tqdm=False)
    assert caught.value.param == "allowed_token_ids"
    assert not llm.engine.core.has_unfinished_requests()
