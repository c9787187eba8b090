"""Lossless verification of draft tokens (speculative decoding), batched over requests with different
numbers of drafts.

Request ``r`` proposes ``k_r`` drafts ``d_1 .. d_k``; the target model scored its last token and every draft,
giving ``k_r + 1`` rows of logits: row ``j`` is the target's distribution ``p_j`` for the token after
``d_j`` (row 0: after the last real token). Each row is constrained and shaped exactly as the plain sampler
would (banned tokens, penalties over the tokens before it, temperature, top-k/p, min-p), so:

- greedy rows accept ``d_j`` while it is the argmax of ``p_{j-1}``; the token after the accepted run is
  that row's argmax, what decoding one token at a time would have produced;
- random rows accept ``d_j`` with probability ``min(1, p(d_j) / q(d_j))``, ``q`` the distribution the draft
  was sampled from (one-hot for a deterministic proposer such as n-gram lookup); at the first rejection the
  replacement is drawn from ``norm(max(0, p - q))``, and when every draft is accepted a bonus token is drawn
  from the last row (Leviathan et al., 2023; Chen et al., 2023). The emitted tokens then follow the
  target's distribution exactly.

A request with no drafts is one row sampled as the plain sampler samples it. Nothing reads a device value
on the host; the only Python loop is over seeded requests, which draw from their own generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.sample import ops
from corral.sample.metadata import SamplingMetadata
from corral.sample.ops import random_sample
from corral.sample.sampler import constrain_logits, gather_logprobs, sampling_probs


@dataclass(frozen=True)
class RejectionSamplerOutput:
    """Per request ``r`` of ``R``: ``token_ids[r, :num_emitted[r]]`` are emitted (accepted drafts, then one
    token of the target's). Logprob fields are per logits row (``[N, 1 + num_logprobs]``, column 0 the token
    the row emitted or checked) and None unless some row asks for logprobs."""

    token_ids: torch.Tensor  # [R, 1 + max_k] int64
    num_emitted: torch.Tensor  # [R] int64 in [1, 1 + k_r]
    logprob_token_ids: torch.Tensor | None
    logprobs: torch.Tensor | None
    sampled_token_ranks: torch.Tensor | None  # [N]


class RejectionSampler(torch.nn.Module):
    def forward(
        self,
        logits: torch.Tensor,  # [N, V], N = sum(k_r + 1), request by request
        metadata: SamplingMetadata,  # N rows; a request's rows share its parameters
        num_draft_tokens: list[int],  # [R] k_r
        draft_token_ids: torch.Tensor,  # [D] int64, D = sum(k_r), request by request
        draft_probs: torch.Tensor | None,  # [D, V] q of each draft; None: every draft is deterministic
        generators: dict[int, torch.Generator],  # request index -> its generator, for seeded random requests
    ) -> RejectionSamplerOutput:
        logits = logits.float()
        num_rows, vocab_size = logits.shape
        device = logits.device
        layout = _RowLayout(num_draft_tokens, device)
        assert num_rows == layout.num_rows and draft_token_ids.shape[0] == layout.num_drafts

        raw_logprobs = torch.log_softmax(logits, dim=-1) if metadata.max_num_logprobs is not None else None
        constrained = constrain_logits(logits, metadata)
        greedy_ids = None if metadata.all_random else ops.greedy_ids(constrained)  # [N]
        probs = None if metadata.all_greedy else sampling_probs(constrained, metadata)  # [N, V]
        greedy_row = metadata.temperature == 0  # [N]

        accepted = self._accept(layout, greedy_ids, probs, greedy_row, draft_token_ids, draft_probs, generators)
        num_accepted = layout.leading_run(accepted)  # [R]
        final_rows = layout.starts + num_accepted  # [R]

        final_ids = self._final_tokens(
            layout, final_rows, num_accepted, greedy_ids, probs, greedy_row, draft_token_ids, draft_probs, generators
        )
        token_ids = torch.zeros(layout.num_requests, layout.max_drafts + 1, dtype=torch.int64, device=device)
        token_ids[layout.req_of_draft, layout.pos_of_draft] = draft_token_ids
        token_ids.scatter_(1, num_accepted[:, None], final_ids[:, None])

        if raw_logprobs is None:
            return RejectionSamplerOutput(token_ids, num_accepted + 1, None, None, None)
        assert metadata.max_num_logprobs is not None
        row_token_ids = torch.zeros(num_rows, dtype=torch.int64, device=device)
        row_token_ids[layout.draft_rows] = draft_token_ids
        row_token_ids[final_rows] = final_ids
        top_ids, top_logprobs, ranks = gather_logprobs(raw_logprobs, row_token_ids, metadata.max_num_logprobs)
        return RejectionSamplerOutput(token_ids, num_accepted + 1, top_ids, top_logprobs, ranks)

    @staticmethod
    def _accept(
        layout: _RowLayout,
        greedy_ids: torch.Tensor | None,
        probs: torch.Tensor | None,
        greedy_row: torch.Tensor,
        draft_token_ids: torch.Tensor,
        draft_probs: torch.Tensor | None,
        generators: dict[int, torch.Generator],
    ) -> torch.Tensor:  # [D] bool: draft accepted on its own (the run is cut at the first rejection)
        rows = layout.draft_rows  # the row scoring each draft
        accepted = None
        if greedy_ids is not None:
            accepted = greedy_ids[rows] == draft_token_ids
        if probs is not None:
            p = probs[rows].gather(1, draft_token_ids[:, None]).squeeze(1)  # [D]
            q = torch.ones_like(p) if draft_probs is None else draft_probs.gather(1, draft_token_ids[:, None]).squeeze(1)
            uniform = torch.rand(layout.num_drafts, device=p.device)
            for request, generator in generators.items():
                begin, count = layout.draft_offsets[request], layout.num_draft_tokens[request]
                uniform[begin : begin + count] = torch.rand(count, generator=generator, device=p.device)
            random_accepted = uniform * q < p  # u < p / q without dividing by q
            accepted = random_accepted if accepted is None else torch.where(greedy_row[rows], accepted, random_accepted)
        assert accepted is not None
        return accepted

    @staticmethod
    def _final_tokens(
        layout: _RowLayout,
        final_rows: torch.Tensor,
        num_accepted: torch.Tensor,
        greedy_ids: torch.Tensor | None,
        probs: torch.Tensor | None,
        greedy_row: torch.Tensor,
        draft_token_ids: torch.Tensor,
        draft_probs: torch.Tensor | None,
        generators: dict[int, torch.Generator],
    ) -> torch.Tensor:  # [R]: the replacement of the first rejected draft, or the bonus token
        greedy_final = None if greedy_ids is None else greedy_ids[final_rows]
        if probs is None:
            assert greedy_final is not None
            return greedy_final
        final_probs = probs[final_rows]  # [R, V]
        if layout.num_drafts:
            rejected = num_accepted < layout.num_drafts_tensor  # [R]
            draft_index = layout.draft_index_of_row[final_rows].clamp_min(0)  # the rejected draft, where one is
            if draft_probs is None:
                q = torch.zeros_like(final_probs).scatter_(1, draft_token_ids[draft_index][:, None], 1.0)
            else:
                q = draft_probs[draft_index]
            residual = (final_probs - q).clamp_min(0)
            # p <= q everywhere only when p == q up to rounding; then p itself is the residual's limit
            residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, final_probs)
            final_probs = torch.where(rejected[:, None], residual, final_probs)
        random_final = random_sample(final_probs, generators)  # weights: no normalising needed
        if greedy_final is None:
            return random_final
        return torch.where(greedy_row[layout.starts], greedy_final, random_final)


class _RowLayout:
    """Index maps between logits rows (``k_r + 1`` per request), drafts (``k_r`` per request) and requests."""

    def __init__(self, num_draft_tokens: list[int], device: torch.device):
        self.num_draft_tokens = num_draft_tokens
        self.num_requests = len(num_draft_tokens)
        self.num_drafts = sum(num_draft_tokens)
        self.num_rows = self.num_drafts + self.num_requests
        self.max_drafts = max(num_draft_tokens, default=0)
        offsets, total = [], 0
        for count in num_draft_tokens:
            offsets.append(total)
            total += count
        self.draft_offsets = offsets

        self.num_drafts_tensor = torch.tensor(num_draft_tokens, dtype=torch.int64, device=device)  # [R]
        rows_per_request = self.num_drafts_tensor + 1
        self.starts = torch.cumsum(rows_per_request, 0) - rows_per_request  # [R] first row of each request
        req_of_row = torch.repeat_interleave(torch.arange(self.num_requests, device=device), rows_per_request)
        pos_of_row = torch.arange(self.num_rows, device=device) - self.starts[req_of_row]  # [N]
        is_draft_row = pos_of_row < self.num_drafts_tensor[req_of_row]  # [N]: every row but each request's last
        self.draft_rows = is_draft_row.nonzero().squeeze(1)  # [D]
        self.req_of_draft = req_of_row[self.draft_rows]  # [D]
        self.pos_of_draft = pos_of_row[self.draft_rows]  # [D]
        self.draft_index_of_row = torch.cumsum(is_draft_row.long(), 0) - 1  # [N], meaningful on draft rows

    def leading_run(self, accepted: torch.Tensor) -> torch.Tensor:  # [D] bool -> [R] accepted before the first rejection
        grid = torch.zeros(self.num_requests, self.max_drafts, dtype=torch.int64, device=accepted.device)
        grid[self.req_of_draft, self.pos_of_draft] = accepted.long()
        return grid.cumprod(dim=1).sum(dim=1)


__all__ = ["RejectionSampler", "RejectionSamplerOutput"]
