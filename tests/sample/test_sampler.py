"""Sampler: greedy exactness, seeded reproducibility, sampled distributions, banned tokens, logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from corral.sample.metadata import SamplingMetadata, build_sampling_metadata
from corral.sample.params import SamplingParams
from corral.sample.sampler import Sampler, SamplerOutput

CPU = torch.device("cpu")
sampler = Sampler()


def metadata_for(
    params: Sequence[SamplingParams],
    vocab_size: int,
    *,
    generators: Sequence[torch.Generator | None] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    outputs: Sequence[Sequence[int]] | None = None,
    banned: Sequence[Sequence[int]] | None = None,
    device: torch.device = CPU,
) -> SamplingMetadata:
    n = len(params)
    if generators is None:
        generators = [
            torch.Generator(device=device).manual_seed(p.seed) if p.seed is not None else None for p in params
        ]
    return build_sampling_metadata(
        params,
        generators,
        prompts if prompts is not None else [[]] * n,
        outputs if outputs is not None else [[]] * n,
        banned if banned is not None else [[]] * n,
        vocab_size,
        device,
    )


# ---------------------------------------------------------------------------------------------- greedy


def test_greedy_is_argmax_and_consumes_no_randomness() -> None:
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0.0, seed=3 if i % 2 else None, top_k=5) for i in range(64)]
    md = metadata_for(params, 1000)
    state = torch.get_rng_state()
    out = sampler(logits, md)
    assert torch.equal(torch.get_rng_state(), state)
    assert out.sampled_token_ids.dtype == torch.int64
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None and out.logprob_token_ids is None and out.sampled_token_ranks is None


def test_mixed_batch_keeps_greedy_rows_exact_and_leaves_their_generator_alone() -> None:
    logits = torch.randn(32, 500, generator=torch.Generator().manual_seed(1))
    greedy_gen = torch.Generator().manual_seed(9)
    params, generators = [], []
    for i in range(32):
        if i % 3 == 0:
            params.append(SamplingParams(temperature=0.0, seed=9))
            generators.append(greedy_gen)
        else:
            params.append(SamplingParams(temperature=1.5, top_p=0.9, seed=i if i % 2 else None))
            generators.append(torch.Generator().manual_seed(i) if i % 2 else None)
    gen_state = greedy_gen.get_state()
    md = metadata_for(params, 500, generators=generators)
    out = sampler(logits, md)
    rows = torch.arange(0, 32, 3)
    assert torch.equal(out.sampled_token_ids[rows], logits[rows].argmax(dim=-1))
    assert torch.equal(greedy_gen.get_state(), gen_state)


def test_input_logits_are_not_modified() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, repetition_penalty=1.3, logprobs=2)
    ] * 4
    sampler(logits, metadata_for(params, 50, prompts=[[1, 2]] * 4, outputs=[[3]] * 4, banned=[[0]] * 4))
    assert torch.equal(logits, before)


# ------------------------------------------------------------------------------------ seeded sampling

VOCAB = 32
_TABLE = 2.0 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(123))


@dataclass
class FakeRequest:
    params: SamplingParams
    prompt: list[int]
    output: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    def logits(self) -> torch.Tensor:
        # A toy "model": the next-token logits depend only on this request's own history.
        history = self.prompt + self.output
        return _TABLE[history[-1]] + 0.1 * len(history)


def run_step(batch: Sequence[FakeRequest]) -> None:
    md = metadata_for(
        [r.params for r in batch],
        VOCAB,
        generators=[r.generator for r in batch],
        prompts=[r.prompt for r in batch],
        outputs=[r.output for r in batch],
    )
    logits = torch.stack([r.logits() for r in batch])
    for r, token in zip(batch, sampler(logits, md).sampled_token_ids.tolist(), strict=True):
        r.output.append(token)


SEEDED = SamplingParams(temperature=0.9, top_k=12, top_p=0.95, frequency_penalty=0.4, seed=1234)


def test_seeded_row_is_independent_of_batch_composition() -> None:
    num_steps = 10
    alone = FakeRequest(SEEDED, [5])
    for _ in range(num_steps):
        run_step([alone])

    target = FakeRequest(SEEDED, [5])
    others = [
        FakeRequest(SamplingParams(), [1]),
        FakeRequest(SamplingParams(temperature=0.0), [2]),
        FakeRequest(SamplingParams(temperature=1.3, seed=77, min_p=0.05), [3]),
        FakeRequest(SamplingParams(top_k=3, seed=1234), [4]),  # same seed, different request
        FakeRequest(SamplingParams(repetition_penalty=1.5, logprobs=3), [6]),
    ]
    for step in range(num_steps):
        # Others join, leave and reorder; the target moves around the batch.
        batch = others[: step % len(others)] + [target] + others[step % len(others) :][: step % 3]
        run_step(batch[::-1] if step % 2 else batch)

    assert target.output == alone.output
    assert torch.equal(target.generator.get_state(), alone.generator.get_state())
    # Sanity: the sequence is not trivially constant, so the comparison means something.
    assert len(set(alone.output)) > 1


def test_seeded_generator_consumption_is_fixed_per_step() -> None:
    def state_after_one_step(batch_size: int, position: int) -> torch.Tensor:
        params = [SamplingParams(seed=i) for i in range(batch_size)]
        gens = [torch.Generator().manual_seed(i) for i in range(batch_size)]
        gens[position] = torch.Generator().manual_seed(5)
        logits = torch.randn(batch_size, VOCAB)
        sampler(logits, metadata_for(params, VOCAB, generators=gens))
        return gens[position].get_state()

    reference = state_after_one_step(1, 0)
    assert torch.equal(state_after_one_step(4, 2), reference)
    assert torch.equal(state_after_one_step(7, 6), reference)


def test_different_seeds_give_different_sequences() -> None:
    a, b = FakeRequest(SEEDED, [5]), FakeRequest(SamplingParams(**{**SEEDED.__dict__, "seed": 99}), [5])
    for _ in range(10):
        run_step([a, b])
    assert a.output != b.output


# ------------------------------------------------------------------------------------- distributions

# Probabilities chosen by hand; the logits are their logs, so temperature 1 samples exactly these.
BASE_PROBS = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.07, 0.04, 0.02])
BASE_LOGITS = torch.tensor(np.log(BASE_PROBS), dtype=torch.float32)
NUM_DRAWS = 20_000
# Chi-square critical value for <= 7 degrees of freedom at p = 1e-4 is about 29.9; the seeds are
# fixed, so the test is deterministic, and this threshold leaves a wide margin for a correct sampler.
CHI2_THRESHOLD = 30.0


def _normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.zeros(len(BASE_PROBS))
    w[: len(weights)] = weights
    return w / w.sum()


# (params, expected distribution worked out by hand in the comments)
DISTRIBUTION_CASES = [
    # Plain sampling: the base probabilities.
    (SamplingParams(), BASE_PROBS),
    # Temperature 0.5 squares the probabilities.
    (SamplingParams(temperature=0.5), BASE_PROBS**2 / (BASE_PROBS**2).sum()),
    # top-k 3 keeps tokens 0..2: [.30, .20, .15] / .65.
    (SamplingParams(top_k=3), _normalised([0.30, 0.20, 0.15])),
    # top-p .45: token 0 (mass above 0), token 1 (above .30 < .45); token 2 has .50 above -> dropped.
    (SamplingParams(top_p=0.45), _normalised([0.30, 0.20])),
    # min-p .3: threshold .3 * .30 = .09 keeps tokens with p >= .09, i.e. 0..4.
    (SamplingParams(min_p=0.3), _normalised([0.30, 0.20, 0.15, 0.12, 0.10])),
    # Temperature 2 -> p ~ sqrt(base) = [.548 .447 .387 .346 .316 .265 .200 .141]; top-k 6 drops 6, 7;
    # renormalised [.237 .194 .168 .150 .137 .115]; top-p .8: mass above token 4 is .749 < .8 (kept),
    # above token 5 is .886 (dropped); min-p .6: threshold .6 * .237 = .142 drops token 4 (.137).
    (
        SamplingParams(temperature=2.0, top_k=6, top_p=0.8, min_p=0.6),
        _normalised(np.sqrt(BASE_PROBS[:4]).tolist()),
    ),
]


def _check_distribution(tokens: torch.Tensor, expected: np.ndarray) -> None:
    counts = np.bincount(tokens.numpy(), minlength=len(expected)).astype(np.float64)
    support = expected > 0
    # Tokens removed by a filter are never sampled.
    assert counts[~support].sum() == 0, f"sampled outside the support: {counts}"
    expected_counts = expected[support] * len(tokens)
    chi2 = float((((counts[support] - expected_counts) ** 2) / expected_counts).sum())
    assert chi2 < CHI2_THRESHOLD, f"chi2={chi2:.1f}, counts={counts}, expected={expected_counts}"


@pytest.mark.parametrize(("params", "expected"), DISTRIBUTION_CASES)
def test_unseeded_distribution(params: SamplingParams, expected: np.ndarray) -> None:
    torch.manual_seed(0)
    logits = BASE_LOGITS.expand(NUM_DRAWS, -1).contiguous()
    out = sampler(logits, metadata_for([params] * NUM_DRAWS, len(BASE_PROBS)))
    _check_distribution(out.sampled_token_ids, expected)


@pytest.mark.parametrize(("params", "expected"), DISTRIBUTION_CASES[::2])
def test_seeded_distribution(params: SamplingParams, expected: np.ndarray) -> None:
    # Many requests with distinct seeds, one draw each: checks the per-generator path.
    num_rows = 4000
    seeded = [SamplingParams(**{**params.__dict__, "seed": 1000 + i}) for i in range(num_rows)]
    logits = BASE_LOGITS.expand(num_rows, -1).contiguous()
    out = sampler(logits, metadata_for(seeded, len(BASE_PROBS)))
    _check_distribution(out.sampled_token_ids, expected)


@pytest.mark.parametrize("with_top_p", [True, False], ids=["sorted-path", "top-k-only-path"])
def test_filters_are_per_row(with_top_p: bool) -> None:
    torch.manual_seed(1)
    rows = [
        SamplingParams(top_k=1),
        SamplingParams(top_k=2),
        SamplingParams(),
        SamplingParams(top_k=5),
        SamplingParams(top_p=0.25),
        SamplingParams(min_p=0.9),
        SamplingParams(top_k=3, top_p=0.55),
    ]
    # Support of each row, by hand from BASE_PROBS (.30 .20 .15 .12 .10 ...): top-p .55 after top-k 3
    # renormalises to [.46 .31 .23]: token 2 has .77 above it, so it is dropped.
    supports = [{0}, {0, 1}, set(range(8)), set(range(5)), {0}, {0}, {0, 1}]
    if not with_top_p:
        rows, supports = rows[:4] + rows[5:6], supports[:4] + supports[5:6]
    params = rows * 500
    out = sampler(BASE_LOGITS.expand(len(params), -1).contiguous(), metadata_for(params, len(BASE_PROBS)))
    tokens = out.sampled_token_ids.view(-1, len(rows))
    for column, support in enumerate(supports):
        assert set(tokens[:, column].tolist()) == support, f"row {column}"


def test_tiny_top_p_keeps_the_most_likely_token() -> None:
    # 1 - p rounds to 1.0 in float32, so the cumulative sum of the last token may sit at or below it;
    # the most likely token must survive anyway.
    logits = torch.randn(256, 1000, generator=torch.Generator().manual_seed(6))
    out = sampler(logits, metadata_for([SamplingParams(top_p=1e-9)] * 256, 1000))
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_top_k_ties_at_the_boundary_are_kept() -> None:
    torch.manual_seed(2)
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]]).expand(2000, -1).contiguous()
    out = sampler(logits, metadata_for([SamplingParams(top_k=2)] * 2000, 4))
    assert set(out.sampled_token_ids.tolist()) == {0, 1, 2}


def test_top_k_ties_are_kept_on_the_sorted_path_too() -> None:
    torch.manual_seed(3)
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]]).expand(2000, -1).contiguous()
    out = sampler(logits, metadata_for([SamplingParams(top_k=2, top_p=0.999)] * 2000, 4))
    assert set(out.sampled_token_ids.tolist()) == {0, 1, 2}


# ----------------------------------------------------------------------------------------- logprobs


def _logprobs_case(num_logprobs: int | None = 4) -> tuple[torch.Tensor, list[SamplingParams], SamplerOutput]:
    logits = torch.randn(12, 40, generator=torch.Generator().manual_seed(4)) * 3
    params = [
        SamplingParams(temperature=0.0, logprobs=num_logprobs, repetition_penalty=1.8),
        SamplingParams(temperature=0.3, top_k=3, logprobs=1, seed=8),
        SamplingParams(temperature=1.7, top_p=0.6, min_p=0.1, presence_penalty=1.0),
    ] * 4
    md = metadata_for(params, 40, prompts=[[0, 1, 2]] * 12, outputs=[[3, 3]] * 12, banned=[[5]] * 12)
    return logits, params, sampler(logits, md)


def test_logprobs_come_from_raw_logits() -> None:
    logits, _, out = _logprobs_case()
    assert out.logprobs is not None and out.logprob_token_ids is not None
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprob_token_ids.shape == (12, 5) and out.logprobs.shape == (12, 5)
    assert out.logprob_token_ids.dtype == torch.int64
    # Column 0 is the sampled token; every value is the raw log-probability of its token, even though
    # penalties, temperature, filters and banned tokens changed what was sampled.
    assert torch.equal(out.logprob_token_ids[:, 0], out.sampled_token_ids)
    torch.testing.assert_close(out.logprobs, raw.gather(1, out.logprob_token_ids))


def test_top_logprobs_are_the_most_likely_tokens_in_order() -> None:
    logits, _, out = _logprobs_case()
    assert out.logprobs is not None and out.logprob_token_ids is not None
    raw = torch.log_softmax(logits, dim=-1)
    expected_ids = raw.argsort(dim=-1, descending=True)[:, :4]
    assert torch.equal(out.logprob_token_ids[:, 1:], expected_ids)
    top = out.logprobs[:, 1:]
    assert (top[:, :-1] >= top[:, 1:]).all()


def test_sampled_token_ranks() -> None:
    logits, _, out = _logprobs_case()
    assert out.sampled_token_ranks is not None
    order = logits.argsort(dim=-1, descending=True)  # no ties in random float logits
    expected = (order == out.sampled_token_ids[:, None]).int().argmax(dim=-1) + 1
    assert torch.equal(out.sampled_token_ranks, expected)
    # Greedy rows without a banned argmax sample the most likely token: rank 1.
    for row in range(0, 12, 3):
        if logits[row].argmax() != 5 and out.sampled_token_ids[row] == logits[row].argmax():
            assert out.sampled_token_ranks[row] == 1


def test_zero_logprobs_gives_only_the_sampled_token() -> None:
    logits = torch.randn(3, 20)
    out = sampler(logits, metadata_for([SamplingParams(logprobs=0), SamplingParams(), SamplingParams()], 20))
    assert out.logprobs is not None and out.logprobs.shape == (3, 1)
    assert out.sampled_token_ranks is not None and out.sampled_token_ranks.shape == (3,)


def test_num_logprobs_is_capped_at_vocab_size() -> None:
    out = sampler(torch.randn(2, 6), metadata_for([SamplingParams(logprobs=20)] * 2, 6))
    assert out.logprob_token_ids is not None and out.logprob_token_ids.shape == (2, 7)


def test_logits_shape_mismatch_is_an_assertion() -> None:
    md = metadata_for([SamplingParams()] * 2, 10)
    with pytest.raises(AssertionError):
        sampler(torch.randn(3, 10), md)
    with pytest.raises(AssertionError):
        sampler(torch.randn(2, 11), md)


# --------------------------------------------------------------------------------------------- cuda


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_semantics() -> None:
    cuda = torch.device("cuda")
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(5))
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.4, logprobs=3),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, seed=11, frequency_penalty=0.5),
        SamplingParams(top_k=7),
        SamplingParams(temperature=1.2, seed=12, presence_penalty=0.3),
    ] * 4
    kwargs = {"prompts": [[1, 2, 3]] * 16, "outputs": [[4, 4, 9]] * 16, "banned": [[7]] * 16}
    cpu_out = sampler(logits, metadata_for(params, 300, **kwargs))
    out = sampler(logits.to(cuda), metadata_for(params, 300, device=cuda, **kwargs))
    assert out.sampled_token_ids.device.type == "cuda"
    greedy = torch.arange(0, 16, 4)
    assert torch.equal(out.sampled_token_ids.cpu()[greedy], cpu_out.sampled_token_ids[greedy])
    assert out.logprobs is not None and cpu_out.logprobs is not None
    torch.testing.assert_close(out.logprobs[greedy].cpu(), cpu_out.logprobs[greedy])

    # Seeded rows on CUDA: same tokens alone or inside a differently composed batch.
    alone = sampler(
        logits[1:2].to(cuda),
        metadata_for(params[1:2], 300, device=cuda, **{k: v[:1] for k, v in kwargs.items()}),
    )
    assert alone.sampled_token_ids.item() == out.sampled_token_ids[1].item()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_distribution() -> None:
    torch.manual_seed(0)
    params, expected = DISTRIBUTION_CASES[-1]
    logits = BASE_LOGITS.expand(NUM_DRAWS, -1).contiguous().cuda()
    out = sampler(logits, metadata_for([params] * NUM_DRAWS, len(BASE_PROBS), device=torch.device("cuda")))
    _check_distribution(out.sampled_token_ids.cpu(), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampler_does_not_sync() -> None:
    cuda = torch.device("cuda")
    params = [
        SamplingParams(temperature=0.0, logprobs=5, repetition_penalty=1.2),
        SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, seed=1, presence_penalty=0.5),
        SamplingParams(top_k=10),
    ] * 8
    md = metadata_for(params, 5000, prompts=[[1, 2]] * 24, outputs=[[3]] * 24, banned=[[0]] * 24, device=cuda)
    logits = torch.randn(24, 5000, device=cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sampler(logits, md)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_top_p_from_candidates_equals_the_full_sort(monkeypatch) -> None:
    """On a CPU, top-p first looks at each row's most likely tokens; rows it cannot decide from them (a flat
    nucleus, a top-k past them, ties at the top-k boundary) take the full sort. Either way the same tokens
    survive, with the same logits, as through the full sort alone."""
    from corral.sample import ops
    from corral.sample.ops import _NUCLEUS_CANDIDATES, _top_k_top_p_sorted, apply_top_k_top_p

    sorted_rows = []

    def counting_sort(logits, top_k, top_p):
        sorted_rows.append(logits.shape[0])
        return _top_k_top_p_sorted(logits, top_k, top_p)

    monkeypatch.setattr(ops, "_top_k_top_p_sorted", counting_sort)

    vocab = 2000
    generator = torch.Generator().manual_seed(7)
    peaked = torch.randn(8, vocab, generator=generator) * 4
    flat = torch.randn(4, vocab, generator=generator) * 0.1  # a nucleus of most of the vocabulary
    tied = torch.zeros(2, vocab)
    tied[:, :3] = 5.0  # top-k 2 ties with a third token; top-k 300 ties far past the candidates
    logits = torch.cat([peaked, flat, tied])
    top_k = torch.tensor([vocab, 1, 5, 50, vocab, 600, vocab, 2, vocab, 10, vocab, vocab, 2, 300])
    top_p = torch.tensor([0.9, 0.5, 1.0, 0.95, 1.0, 0.99, 1e-9, 0.3, 0.9, 0.8, 1.0, 0.5, 0.9, 0.9])
    assert logits.shape[1] > _NUCLEUS_CANDIDATES
    fast = apply_top_k_top_p(logits, top_k, int(top_k.max()), top_p)
    reference = _top_k_top_p_sorted(logits, top_k, top_p)
    assert torch.equal(torch.isfinite(fast), torch.isfinite(reference))
    assert torch.equal(fast[torch.isfinite(fast)], reference[torch.isfinite(reference)])
    # sorted: top-k 600 and 300 (past the candidates), the flat rows with top-p 0.9 and 0.5; every other row,
    # top-k 10 over a flat row and the tie at top-k 2 included, is decided from its candidates
    assert sorted_rows == [4]
    assert int(torch.isfinite(fast[8]).sum()) > _NUCLEUS_CANDIDATES  # a flat row went through the sort
    assert int(torch.isfinite(fast[12]).sum()) == 3  # top-k 2 keeps the tie
    assert int(torch.isfinite(fast[13]).sum()) > _NUCLEUS_CANDIDATES  # ties past the candidates: sorted


def test_logit_bias_moves_the_greedy_pick_but_not_the_raw_logprobs() -> None:
    from corral.sample.metadata import build_sampling_metadata
    from corral.sample.params import SamplingParams
    from corral.sample.sampler import Sampler

    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]])
    params = [SamplingParams(temperature=0, logprobs=1, logit_bias={2: 10.0}), SamplingParams(temperature=0, logprobs=1)]
    metadata = build_sampling_metadata(params, [None, None], [[], []], [[], []], [(), ()], 4, torch.device("cpu"))
    out = Sampler()(logits, metadata)
    assert out.sampled_token_ids.tolist() == [2, 1]
    assert torch.allclose(out.logprobs[0, 0], torch.log_softmax(logits[0], -1)[2])
