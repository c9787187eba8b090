"""Rejection sampler: greedy acceptance, the plain sampler's tokens without drafts, and the target's exact
distribution with drafts from a different distribution (chi-square at a fixed seed)."""

from __future__ import annotations

import torch

from corral.sample.metadata import build_sampling_metadata
from corral.sample.params import SamplingParams
from corral.sample.rejection import RejectionSampler
from corral.sample.sampler import Sampler, sampling_probs

CPU = torch.device("cpu")
rejection_sampler = RejectionSampler()


def metadata(params: list[SamplingParams], vocab_size: int, generators=None):
    n = len(params)
    return build_sampling_metadata(
        params, generators or [None] * n, [[]] * n, [[]] * n, [[]] * n, vocab_size, CPU
    )


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(X >= statistic) for counts drawn from ``probs`` (cells with tiny expectation merged into one)."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    expected = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2))


def test_greedy_accepts_the_argmax_run_then_emits_the_argmax():
    vocab = 10
    logits = torch.full((7, vocab), -1.0)
    argmax = [3, 4, 5, 6, 1, 2, 8]  # request 0: rows 0-3 (3 drafts); request 1: rows 4-6 (2 drafts)
    logits[torch.arange(7), torch.tensor(argmax)] = 5.0
    drafts = torch.tensor([3, 4, 9, 1, 2])  # request 0: third draft wrong; request 1: all right
    out = rejection_sampler(logits, metadata([SamplingParams(temperature=0)] * 7, vocab), [3, 2], drafts, None, {})
    assert out.num_emitted.tolist() == [3, 3]
    assert out.token_ids[0, :3].tolist() == [3, 4, 5]  # 9 rejected: row 2's argmax replaces it
    assert out.token_ids[1, :3].tolist() == [1, 2, 8]  # both accepted, then the bonus token


def test_without_drafts_it_samples_as_the_plain_sampler():
    vocab = 50
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=7, seed=4)] * 3
    generators = [None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in params]
    plain = Sampler()(logits, metadata(params, vocab, generators)).sampled_token_ids
    generators = [None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in params]
    md = metadata(params, vocab, generators)
    out = rejection_sampler(
        logits, md, [0] * 6, torch.empty(0, dtype=torch.int64), None,
        {i: g for i, g in enumerate(generators) if g is not None},
    )
    assert out.num_emitted.tolist() == [1] * 6
    assert torch.equal(out.token_ids[:, 0], plain)


def test_emitted_tokens_follow_the_target_distribution():
    """Drafts drawn from q != p (and deterministic drafts, q one-hot): the first emitted token must follow
    p_0, and the second (when a draft was accepted first) p_1, the target's shaped distributions."""
    vocab, num_requests, num_drafts = 6, 20000, 2
    gen = torch.Generator().manual_seed(0)
    target_rows = torch.randn(num_drafts + 1, vocab, generator=gen) * 1.5
    draft_rows = torch.randn(num_drafts, vocab, generator=gen) * 1.5
    params = SamplingParams(temperature=0.8, top_k=5)
    md = metadata([params] * (num_drafts + 1), vocab)
    target_probs = sampling_probs(target_rows, md)  # temperature and top-k applied: what p means
    q = draft_rows.softmax(dim=-1)

    torch.manual_seed(1)
    logits = target_rows.repeat(num_requests, 1)
    for draft_probs in (q, None):
        if draft_probs is None:  # a deterministic proposer always proposing token 2 then 4
            drafts = torch.tensor([2, 4]).repeat(num_requests)
        else:
            drafts = torch.multinomial(q, num_requests, replacement=True).T.reshape(-1)
            draft_probs = q.repeat(num_requests, 1)
        out = rejection_sampler(
            logits, metadata([params] * len(logits), vocab), [num_drafts] * num_requests, drafts, draft_probs, {}
        )
        first = torch.bincount(out.token_ids[:, 0], minlength=vocab)
        assert chi_square_p_value(first, target_probs[0]) > 1e-3
        second_rows = out.num_emitted >= 2
        second = torch.bincount(out.token_ids[second_rows, 1], minlength=vocab)
        assert second_rows.sum() > 1000
        assert chi_square_p_value(second, target_probs[1]) > 1e-3
        # token 5 is outside the top-5 of every row: never emitted
        banned = target_rows.argsort(dim=-1)[:, 0]
        assert not (out.token_ids[:, 0] == banned[0]).any()


def test_logprobs_are_those_of_each_emitted_position():
    vocab = 8
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(5))
    drafts = logits[:2].argmax(dim=-1)  # both accepted under greedy
    out = rejection_sampler(
        logits, metadata([SamplingParams(temperature=0, logprobs=2)] * 3, vocab), [2], drafts, None, {}
    )
    expected = torch.log_softmax(logits, dim=-1).max(dim=-1).values
    assert out.num_emitted.tolist() == [3]
    assert torch.allclose(out.logprobs[:, 0], expected)
    assert out.sampled_token_ranks.tolist() == [1, 1, 1]
