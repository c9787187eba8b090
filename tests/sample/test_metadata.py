"""build_sampling_metadata: which fields are built, their neutral values, padding and invariants."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from corral.sample.metadata import SamplingMetadata, build_sampling_metadata
from corral.sample.params import SamplingParams

CPU = torch.device("cpu")
V = 16


def build(
    params: Sequence[SamplingParams],
    prompts: Sequence[Sequence[int]] | None = None,
    outputs: Sequence[Sequence[int]] | None = None,
    banned: Sequence[Sequence[int]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> SamplingMetadata:
    n = len(params)
    if generators is None:
        generators = [torch.Generator().manual_seed(p.seed) if p.seed is not None else None for p in params]
    return build_sampling_metadata(
        params,
        generators,
        prompts if prompts is not None else [[1, 2, 3]] * n,
        outputs if outputs is not None else [[4]] * n,
        banned if banned is not None else [[]] * n,
        V,
        CPU,
    )


def test_defaults_build_only_temperature() -> None:
    md = build([SamplingParams()] * 3)
    assert torch.equal(md.temperature, torch.ones(3))
    assert md.temperature.dtype == torch.float32
    assert md.all_random and not md.all_greedy
    assert md.top_k is None and md.max_top_k == 0
    assert md.top_p is None and md.min_p is None
    assert md.generators == {}
    assert md.no_penalties
    assert md.repetition_penalties is None and md.presence_penalties is None
    assert md.frequency_penalties is None
    assert md.prompt_token_ids is None and md.output_token_ids is None
    assert md.banned_token_coords is None
    assert md.max_num_logprobs is None
    assert md.num_rows == 3 and md.vocab_size == V


def test_greedy_rows_have_zero_temperature_and_flags() -> None:
    md = build([SamplingParams(temperature=0.0), SamplingParams(temperature=1e-6)])
    assert torch.equal(md.temperature, torch.zeros(2))
    assert md.all_greedy and not md.all_random
    mixed = build([SamplingParams(temperature=0.0), SamplingParams(temperature=0.5)])
    assert torch.equal(mixed.temperature, torch.tensor([0.0, 0.5]))
    assert not mixed.all_greedy and not mixed.all_random


def test_empty_batch() -> None:
    md = build([])
    assert md.num_rows == 0 and md.all_greedy and md.all_random


def test_top_k_neutral_value_clamp_and_max() -> None:
    params = [
        SamplingParams(top_k=3),
        SamplingParams(),
        SamplingParams(top_k=100),  # above the vocabulary: keeps everything, counts as off
        SamplingParams(top_k=5),
        SamplingParams(temperature=0.0, top_k=2),  # greedy rows ignore filters
    ]
    md = build(params)
    assert md.top_k is not None
    assert md.top_k.tolist() == [3, V, V, 5, V]
    assert md.top_k.dtype == torch.int64
    assert md.max_top_k == 5


def test_filters_off_when_only_greedy_rows_set_them() -> None:
    md = build([SamplingParams(temperature=0.0, top_k=2, top_p=0.5, min_p=0.3), SamplingParams(top_k=V)])
    assert md.top_k is None and md.top_p is None and md.min_p is None


def test_top_p_and_min_p() -> None:
    md = build(
        [SamplingParams(top_p=0.7), SamplingParams(min_p=0.2), SamplingParams(temperature=0, top_p=0.1)]
    )
    assert md.top_p is not None and md.min_p is not None
    assert md.top_p.tolist() == pytest.approx([0.7, 1.0, 1.0])
    assert md.min_p.tolist() == pytest.approx([0.0, 0.2, 0.0])


def test_generators_only_for_seeded_random_rows() -> None:
    g1, g3 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(3)
    params = [
        SamplingParams(),
        SamplingParams(seed=1),
        SamplingParams(temperature=0, seed=2),
        SamplingParams(seed=3),
    ]
    md = build(params, generators=[None, g1, torch.Generator(), g3])
    assert md.generators == {1: g1, 3: g3}


def test_seeded_row_without_generator_is_an_assertion() -> None:
    with pytest.raises(AssertionError):
        build([SamplingParams(seed=7)], generators=[None])


def test_repetition_penalty_pads_prompt_and_output_with_vocab_size() -> None:
    params = [
        SamplingParams(repetition_penalty=1.2),
        SamplingParams(),
        SamplingParams(repetition_penalty=0.9),
    ]
    md = build(params, prompts=[[1, 2], [3, 4, 5, 6], [7]], outputs=[[8, 8, 9], [10], []])
    assert md.repetition_penalties is not None
    assert md.repetition_penalties.tolist() == pytest.approx([1.2, 1.0, 0.9])
    assert md.presence_penalties is None and md.frequency_penalties is None
    # Row 1 uses no penalty, so its tokens are not copied.
    assert md.prompt_token_ids is not None and md.output_token_ids is not None
    assert md.prompt_token_ids.tolist() == [[1, 2], [V, V], [7, V]]
    assert md.output_token_ids.tolist() == [[8, 8, 9], [V, V, V], [V, V, V]]
    assert md.prompt_token_ids.dtype == torch.int64


def test_presence_and_frequency_skip_the_prompt() -> None:
    params = [SamplingParams(presence_penalty=0.5), SamplingParams(frequency_penalty=-0.3)]
    md = build(params, outputs=[[], [2, 2]])
    assert md.repetition_penalties is None and md.prompt_token_ids is None
    assert md.presence_penalties is not None and md.frequency_penalties is not None
    assert md.presence_penalties.tolist() == pytest.approx([0.5, 0.0])
    assert md.frequency_penalties.tolist() == pytest.approx([0.0, -0.3])
    assert md.output_token_ids is not None and md.output_token_ids.tolist() == [[V, V], [2, 2]]
    assert not md.no_penalties


def test_penalties_on_greedy_rows_count() -> None:
    md = build([SamplingParams(temperature=0.0, frequency_penalty=1.0)])
    assert md.frequency_penalties is not None


def test_banned_tokens_become_row_token_pairs() -> None:
    md = build([SamplingParams()] * 3, banned=[[2, 5], [], [0]])
    assert md.banned_token_coords is not None
    assert md.banned_token_coords.tolist() == [[0, 0, 2], [2, 5, 0]]
    assert build([SamplingParams()] * 2, banned=[[], []]).banned_token_coords is None


def test_banned_token_out_of_vocab_is_an_assertion() -> None:
    with pytest.raises(AssertionError):
        build([SamplingParams()], banned=[[V]])


def test_max_num_logprobs() -> None:
    md = build([SamplingParams(logprobs=2), SamplingParams(), SamplingParams(logprobs=5)])
    assert md.max_num_logprobs == 5
    assert build([SamplingParams(logprobs=0)]).max_num_logprobs == 0


@pytest.mark.parametrize("short", ["generators", "prompts", "outputs", "banned"])
def test_mismatched_lengths_are_an_assertion(short: str) -> None:
    params = [SamplingParams(), SamplingParams()]
    args = {"generators": [None, None], "prompts": [[1], [2]], "outputs": [[], []], "banned": [[], []]}
    args[short] = args[short][:1]
    with pytest.raises(AssertionError):
        build(params, **args)
