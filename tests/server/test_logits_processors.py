"""The per-request logits processors through the official client. logit_bias: +100 makes a token the greedy choice
at every step, -100 removes the token greedy decoding would have picked, and the logprobs still describe the
model's own distribution. vLLM's allowed_token_ids and bad_words, as extra fields."""

from __future__ import annotations

import openai
import pytest

from .conftest import API_KEY, MODEL_NAME

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def greedy(client, **kwargs):
    return client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, **kwargs).choices[0]


def test_a_large_bias_forces_the_token_and_a_negative_one_bans_it(client, server):
    banana = server.engine.engine.tokenizer.encode(" banana", add_special_tokens=False)[0]
    assert greedy(client, logit_bias={str(banana): 100}).text == " banana" * 3

    free = greedy(client, logprobs=1)
    first = free.logprobs.tokens[0]
    first_id = server.engine.engine.tokenizer.encode(first, add_special_tokens=False)[0]
    banned = greedy(client, logit_bias={str(first_id): -100}, logprobs=1)
    assert banned.logprobs.tokens[0] != first
    # logprobs come from the raw logits: the sampled token's logprob is not the biased one
    assert banned.logprobs.top_logprobs[0][first] == pytest.approx(free.logprobs.token_logprobs[0], abs=1e-4)


def test_allowed_token_ids_and_bad_words_over_http(client, server):
    tokenizer = server.engine.engine.tokenizer
    allowed = sorted(set(tokenizer.encode(" Paris London", add_special_tokens=False)))
    choice = greedy(client, extra_body={"allowed_token_ids": allowed})
    assert choice.text.replace(" Paris", "").replace(" London", "") == ""
    free = greedy(client).text
    word = free.split()[0]
    assert word not in greedy(client, extra_body={"bad_words": [word]}).text.split()
