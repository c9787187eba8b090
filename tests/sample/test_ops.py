"""Sampling ops at their edges: exact top-p boundaries, top-k past the top-p candidates, per-row min-p,
dtypes, and the global RNG."""

from __future__ import annotations

import math

import pytest
import torch

from corral.sample import ops
from corral.sample.ops import apply_min_p, apply_temperature, apply_top_k_top_p, inverse_cdf, random_sample

NEG_INF = float("-inf")


def kept(logits: torch.Tensor) -> list[set[int]]:
    """Each row's surviving (finite) token ids."""
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]


def nucleus_reference(row: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """Top-k (ties kept) then top-p by definition, in float64 over one descending sort: a token survives
    when the renormalised mass of the tokens before it is below p."""
    values, ids = row.double().sort(descending=True)
    in_top_k = values >= values[top_k - 1]
    values, ids = values[in_top_k], ids[in_top_k]
    probs = values.softmax(dim=0)
    mass_before = probs.cumsum(dim=0) - probs
    return set(ids[mass_before < top_p].tolist())


# ------------------------------------------------------------------------------------------ temperature


def test_temperature_divides_each_row_and_leaves_greedy_rows_as_they_are() -> None:
    logits = torch.tensor([[1.0, -2.0, 4.0], [1.0, -2.0, 4.0]])
    out = apply_temperature(logits, torch.tensor([0.0, 2.0]))
    assert out.tolist() == [[1.0, -2.0, 4.0], [0.5, -1.0, 2.0]]


def test_bfloat16_logits_with_float32_parameters_stay_bfloat16() -> None:
    logits = torch.tensor([[1.0, 2.0, 4.0, 0.5]], dtype=torch.bfloat16)
    scaled = apply_temperature(logits, torch.tensor([2.0]))
    assert scaled.dtype == torch.bfloat16
    assert scaled.tolist() == [[0.5, 1.0, 2.0, 0.25]]
    assert apply_min_p(logits, torch.tensor([0.5])).dtype == torch.bfloat16
    wide = torch.zeros(1, 300, dtype=torch.bfloat16)  # past the top-p candidates (CPU)
    for x in (logits, wide):
        out = apply_top_k_top_p(x, torch.tensor([2]), 2, torch.tensor([0.9]))
        assert out.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ top-p


@pytest.mark.parametrize("vocab", [3, 300], ids=["sorted-path", "candidates-path"])
@pytest.mark.parametrize(("top_p", "expected_size"), [(0.5, 1), (0.75, 2)])
def test_top_p_mass_exactly_p_stops_the_nucleus(vocab: int, top_p: float, expected_size: int) -> None:
    # Probabilities 1/4, 1/4, 1/2 are exact in binary (the padding is -inf). vLLM's convention: drop a token
    # when the tokens above it already reach p. With p = 1/2 the 1/2 token alone reaches it; with p = 3/4
    # the 1/2 token and one 1/4 token (3/4) do, and the tie between the two 1/4s is broken either way.
    logits = torch.full((1, vocab), NEG_INF)
    logits[0, :3] = torch.tensor([0.0, 0.0, math.log(2.0)])
    assert logits.softmax(dim=-1)[0, :3].tolist() == [0.25, 0.25, 0.5]
    (survivors,) = kept(apply_top_k_top_p(logits, None, 0, torch.tensor([top_p])))
    assert 2 in survivors and len(survivors) == expected_size


def test_top_k_past_the_candidates_with_top_p_matches_the_definition() -> None:
    vocab = 1000
    # Row 1: 300 head tokens with logits -0.001 * i, 700 tail tokens at -1, shuffled. Top-k 300 keeps the
    # head; renormalised over it, the mass before head token j is (1 - r^j) / (1 - r^300), r = e^-0.001,
    # which stays below 0.9 while j < -1000 * ln(1 - 0.9 * (1 - e^-0.3)) = 265.65: 266 tokens survive.
    # Without top-k the tail holds half the mass and the nucleus would run into it.
    head = -0.001 * torch.arange(300, dtype=torch.float32)
    flat = torch.cat([head, torch.full((vocab - 300,), -1.0)])
    flat = flat[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]
    peaked = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 4  # decided by its candidates
    logits = torch.stack([peaked, flat])
    top_k, top_p = torch.tensor([vocab, 300]), torch.tensor([0.9, 0.9])
    out = apply_top_k_top_p(logits, top_k, 300, top_p)
    survivors = kept(out)
    assert len(survivors[1]) == 266
    assert survivors[1] == nucleus_reference(flat, 300, 0.9)
    assert survivors[0] == nucleus_reference(peaked, vocab, 0.9)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_top_k_ties_straddling_the_last_candidate_are_all_kept() -> None:
    # 399 tokens tie at the 10th largest logit, far past the 256 candidates: top-k 10 keeps all 400
    # tokens >= it, and top-p 0.999 removes none (the least likely holds e / (e^2 + 399 e) = 0.25%).
    logits = torch.zeros(1, 1000)
    logits[0, 0] = 2.0
    logits[0, 1:400] = 1.0
    out = apply_top_k_top_p(logits, torch.tensor([10]), 10, torch.tensor([0.999]))
    assert kept(out) == [set(range(400))]
    assert torch.equal(out[0, :400], logits[0, :400])


def test_rows_decided_by_their_candidates_skip_the_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only rows whose top-k ties or nucleus reach past the 256 candidates pay for the full sort."""
    sorted_rows: list[int] = []
    full_sort = ops._top_k_top_p_sorted

    def counting_sort(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor) -> torch.Tensor:
        sorted_rows.append(logits.shape[0])
        return full_sort(logits, top_k, top_p)

    monkeypatch.setattr(ops, "_top_k_top_p_sorted", counting_sort)
    vocab = 1000
    logits = torch.full((2, vocab), -50.0)
    # Row 0: top-k 10 ties with the candidates up to the 255th, not the 256th; top-p 0.999 keeps all 255
    # (the least likely holds e^2 / (e^3 + 254 e^2) = 0.39%).
    logits[0, 0] = 3.0
    logits[0, 1:255] = 2.0
    # Row 1: 256 equal candidates; the first 255 hold 255/256 = 99.6% of the mass, short of p = 99.8%,
    # so the nucleus needs the 256th candidate, and no further.
    logits[1, :256] = 0.0
    out = apply_top_k_top_p(logits, torch.tensor([10, vocab]), 10, torch.tensor([0.999, 0.998]))
    assert kept(out) == [set(range(255)), set(range(256))]
    assert sorted_rows == []


# ------------------------------------------------------------------------------------------------ min-p


def test_min_p_threshold_is_relative_to_each_rows_own_top() -> None:
    # min_p 1/2: row 0 drops 9 (e^-1 = 0.37 of its top), row 1 keeps 0.5 (e^-0.5 = 0.61 of its top);
    # against the batch's top (10) row 1 would lose every token.
    logits = torch.tensor([[10.0, 9.0, 0.0], [1.0, 0.5, -5.0]])
    out = apply_min_p(logits, torch.tensor([0.5, 0.5]))
    assert kept(out) == [{0}, {0, 1}]
    assert out[1, :2].tolist() == [1.0, 0.5]


def test_min_p_one_keeps_every_token_tied_for_the_top() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    out = apply_min_p(logits, torch.tensor([1.0]))
    assert out.tolist() == [[NEG_INF, 3.0, 3.0, NEG_INF]]
    assert out.softmax(dim=-1).tolist() == [[0.0, 0.5, 0.5, 0.0]]


# ---------------------------------------------------------------------------------------- random sample


def test_random_sample_with_every_row_seeded_leaves_the_global_rng_alone() -> None:
    probs = torch.full((2, 5), 0.2)

    def generators() -> dict[int, torch.Generator]:
        return {0: torch.Generator().manual_seed(1), 1: torch.Generator().manual_seed(2)}

    state = torch.get_rng_state()
    first = random_sample(probs, generators())
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(random_sample(probs, generators()), first)
    # one unseeded row: the batch draws from the default generator
    random_sample(probs, {0: torch.Generator().manual_seed(1)})
    assert not torch.equal(torch.get_rng_state(), state)


def test_inverse_cdf_splits_the_unit_interval_by_weight_and_never_picks_a_zero_weight() -> None:
    weights = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0]])  # unnormalised, as the rejection sampler's residuals

    def at(u: float) -> int:
        return int(inverse_cdf(weights, torch.tensor([[u]], dtype=torch.float64))[0])

    assert [at(u) for u in (0.0, 0.2499, 0.25, 0.9999)] == [1, 1, 3, 3]
    assert at(1.0) == 3  # u * total rounding up to the total: the last token of weight, not the zero after it
    rows = torch.tensor([[0.5, 0.5], [0.0, 2.0]])
    assert inverse_cdf(rows, torch.tensor([[0.75], [0.1]], dtype=torch.float64)).tolist() == [1, 1]


def test_random_sample_frequencies_follow_the_weights() -> None:
    weights = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(20000, 4)
    counts = torch.bincount(random_sample(weights, {}), minlength=4).double() / 20000
    assert counts[1] == 0
    assert torch.allclose(counts, torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64), atol=0.015)


def test_greedy_ids_take_the_first_maximum_as_argmax_does():
    """Ties (common with banned tokens at -inf and penalties) and NaN rows pick argmax's index."""
    logits = torch.randint(0, 3, (64, 1000), generator=torch.Generator().manual_seed(0)).float()
    logits[5, 7] = float("nan")
    logits[9] = float("-inf")
    assert torch.equal(ops.greedy_ids(logits), logits.argmax(dim=-1))


def test_token_bitmask_masks_the_given_rows_only_and_the_padding_past_it() -> None:
    from corral.sample.ops import apply_token_bitmask_

    logits = torch.zeros(3, 70)  # a vocabulary of 70: wider than the 64 tokens the bitmask covers
    bitmask = torch.zeros(1, 2, dtype=torch.int32)
    bitmask[0, 0] = (1 << 3) | -(1 << 31)  # tokens 3 and 31 (bit 31 is the int32 sign bit)
    bitmask[0, 1] = 1 << 1  # token 33
    out = apply_token_bitmask_(logits, torch.tensor([1]), bitmask)
    assert out is logits
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [3, 31, 33]
    assert torch.equal(out[[0, 2]], torch.zeros(2, 70))
