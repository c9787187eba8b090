"""Penalties and banned tokens against a straightforward per-row Python reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.sample.metadata import build_sampling_metadata
from corral.sample.params import SamplingParams
from corral.sample.penalties import apply_penalties
from corral.sample.sampler import Sampler

CPU = torch.device("cpu")


def reference_penalties(
    logits: list[float], prompt: list[int], output: list[int], params: SamplingParams
) -> list[float]:
    """One row, one token at a time, exactly as the OpenAI / vLLM semantics read."""
    out = list(logits)
    seen = set(prompt) | set(output)
    for token in range(len(out)):
        if token in seen:
            r = params.repetition_penalty
            out[token] = out[token] / r if out[token] > 0 else out[token] * r
        count = output.count(token)
        out[token] -= params.frequency_penalty * count
        if count:
            out[token] -= params.presence_penalty
    return out


@st.composite
def penalty_batches(
    draw: st.DrawFn,
) -> tuple[int, list[SamplingParams], list[list[int]], list[list[int]], list]:
    vocab_size = draw(st.integers(2, 12))
    num_rows = draw(st.integers(1, 5))
    tokens = st.lists(st.integers(0, vocab_size - 1), max_size=10)
    params = [
        SamplingParams(
            temperature=draw(st.sampled_from([0.0, 1.0])),
            repetition_penalty=draw(st.sampled_from([1.0, 0.5, 1.3, 2.0])),
            presence_penalty=draw(st.sampled_from([0.0, -1.0, 0.7, 2.0])),
            frequency_penalty=draw(st.sampled_from([0.0, -0.4, 0.25, 1.5])),
        )
        for _ in range(num_rows)
    ]
    prompts = [draw(tokens) for _ in range(num_rows)]
    outputs = [draw(tokens) for _ in range(num_rows)]
    logits = [
        draw(st.lists(st.floats(-20, 20, width=32), min_size=vocab_size, max_size=vocab_size))
        for _ in range(num_rows)
    ]
    return vocab_size, params, prompts, outputs, logits


@settings(max_examples=150, deadline=None)
@given(penalty_batches())
def test_penalties_match_reference(batch: tuple) -> None:
    vocab_size, params, prompts, outputs, logits = batch
    md = build_sampling_metadata(
        params, [None] * len(params), prompts, outputs, [[]] * len(params), vocab_size, CPU
    )
    got = apply_penalties(torch.tensor(logits, dtype=torch.float32), md)
    expected = [reference_penalties(*row) for row in zip(logits, prompts, outputs, params, strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(penalty_batches())
def test_greedy_picks_argmax_of_penalised_logits(batch: tuple) -> None:
    vocab_size, params, prompts, outputs, logits = batch
    params = [SamplingParams(**{**p.__dict__, "temperature": 0.0}) for p in params]
    md = build_sampling_metadata(
        params, [None] * len(params), prompts, outputs, [[]] * len(params), vocab_size, CPU
    )
    sampled = Sampler()(torch.tensor(logits, dtype=torch.float32), md).sampled_token_ids.tolist()
    for token, row in zip(sampled, zip(logits, prompts, outputs, params, strict=True), strict=True):
        ref = torch.tensor(reference_penalties(*row), dtype=torch.float32)
        # Near-ties may resolve either way under float rounding; the chosen token must be a maximum.
        assert ref[token] >= ref.max() - 1e-4


def test_no_penalties_returns_logits_untouched() -> None:
    logits = torch.randn(3, 10)
    md = build_sampling_metadata([SamplingParams()] * 3, [None] * 3, [[1]] * 3, [[2]] * 3, [[]] * 3, 10, CPU)
    assert apply_penalties(logits, md) is logits


# -------------------------------------------------------------------------------------- banned tokens


def test_banned_tokens_are_never_sampled() -> None:
    torch.manual_seed(0)
    vocab_size, num_rows = 10, 3000
    # Tokens 0 and 1 dominate every row; they are banned (min_tokens not reached yet).
    logits = torch.zeros(num_rows, vocab_size)
    logits[:, :2] = 10.0
    kinds = [
        SamplingParams(temperature=0.0),
        SamplingParams(),
        SamplingParams(temperature=5.0, seed=3),
        SamplingParams(top_k=2, top_p=0.5),
        SamplingParams(repetition_penalty=0.5, presence_penalty=-2.0),
    ]
    params = [kinds[i % len(kinds)] for i in range(num_rows)]
    generators = [
        torch.Generator().manual_seed(i) if p.seed is not None else None for i, p in enumerate(params)
    ]
    md = build_sampling_metadata(
        params, generators, [[0, 1]] * num_rows, [[0]] * num_rows, [[0, 1]] * num_rows, vocab_size, CPU
    )
    sampled = Sampler()(logits, md).sampled_token_ids
    assert (sampled >= 2).all()


def test_banned_tokens_only_affect_their_row() -> None:
    logits = torch.tensor([[5.0, 1.0, 0.0], [5.0, 1.0, 0.0]])
    params = [SamplingParams(temperature=0.0)] * 2
    md = build_sampling_metadata(params, [None, None], [[], []], [[], []], [[0], []], 3, CPU)
    assert Sampler()(logits, md).sampled_token_ids.tolist() == [1, 0]
