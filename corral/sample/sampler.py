"""Sampler: turns one step's logits [B, V] into one token per row, plus optional logprobs.

Order of operations (as in vLLM's v1 sampler):

1. logprobs, if any row asks, from the RAW model logits: ``log_softmax`` before banned tokens,
   penalties, temperature or any filter. They describe the model's distribution, not the sampler's.
2. logit_bias added; then banned tokens (min_tokens: EOS / stop ids) and tokens a row's grammar disallows ->
   -inf, for greedy rows too;
3. penalties: repetition, then frequency, then presence;
4. greedy rows: argmax of the penalised logits (no randomness consumed);
5. random rows: temperature, top-k, top-p, min-p, then one uniform draw through the cumulative sum.

Nothing here reads a device value on the host (no ``.item()`` / ``.tolist()``), so a step runs
without a device sync; the only Python loop is over seeded rows, to draw each one's uniform from its
own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.sample.metadata import SamplingMetadata
from corral.sample.ops import (
    apply_min_p,
    apply_temperature,
    apply_token_bitmask_,
    apply_top_k_top_p,
    greedy_ids,
    random_sample,
)
from corral.sample.penalties import apply_penalties


@dataclass(frozen=True)
class SamplerOutput:
    """One step's sampling result, all tensors on the logits' device.

    ``logprob_token_ids`` / ``logprobs`` have 1 + N columns, N = min(max_num_logprobs, V): column 0 is
    the sampled token, columns 1.. the N most likely tokens under the raw logits, most likely first.
    Every row gets N columns; rows that asked for fewer (or none) are trimmed by the output processor.
    """

    sampled_token_ids: torch.Tensor  # [B] int64
    logprob_token_ids: torch.Tensor | None  # [B, 1 + N] int64
    logprobs: torch.Tensor | None  # [B, 1 + N] float32
    sampled_token_ranks: torch.Tensor | None  # [B] int64, 1 = the most likely token


class Sampler(torch.nn.Module):
    """Batched sampler for one engine step; stateless (per-request state lives in the metadata)."""

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        assert logits.dim() == 2, f"logits must be [B, V], got shape {tuple(logits.shape)}"
        assert logits.shape[0] == metadata.num_rows, (
            f"logits have {logits.shape[0]} rows, metadata has {metadata.num_rows}"
        )
        assert logits.shape[1] == metadata.vocab_size, (
            f"logits have {logits.shape[1]} columns, vocab_size is {metadata.vocab_size}"
        )
        logits = logits.float()  # no copy when already float32; only a grammar mask writes into it (in place)

        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]

        sampled = self._sample(constrain_logits(logits, metadata), metadata)  # [B] int64

        if raw_logprobs is None:
            return SamplerOutput(sampled, None, None, None)
        assert metadata.max_num_logprobs is not None
        token_ids, logprobs, ranks = gather_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs)
        return SamplerOutput(sampled, token_ids, logprobs, ranks)

    @staticmethod
    def _sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        greedy = None
        if not metadata.all_random:
            greedy = greedy_ids(logits)
            if metadata.all_greedy:
                return greedy

        random_ids = random_sample(sampling_probs(logits, metadata), metadata.generators)
        if greedy is None:
            return random_ids
        return torch.where(metadata.temperature == 0, greedy, random_ids)


def constrain_logits(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Steps 2-3: logit_bias, banned and grammar-disallowed tokens to -inf, then penalties. Greedy rows take the
    argmax of the result."""
    if metadata.logit_bias is not None:
        (rows, token_ids), biases = metadata.logit_bias
        logits = logits.index_put((rows, token_ids), biases, accumulate=True)
    if metadata.banned_token_coords is not None:
        rows, token_ids = metadata.banned_token_coords
        logits = logits.index_put((rows, token_ids), logits.new_full((), float("-inf")))
    if metadata.allowed_token_bitmask is not None:
        # in place: the model runner hands over fresh logits, and the raw logprobs are taken before this
        logits = apply_token_bitmask_(logits, *metadata.allowed_token_bitmask)
    return apply_penalties(logits, metadata)


def sampling_probs(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Step 5's distribution [B, V] from constrained logits: temperature, top-k, top-p, min-p, softmax. The
    distribution random rows sample from; greedy rows' rows are meaningless."""
    logits = apply_temperature(logits, metadata.temperature)
    logits = apply_top_k_top_p(logits, metadata.top_k, metadata.max_top_k, metadata.top_p)
    if metadata.min_p is not None:
        logits = apply_min_p(logits, metadata.min_p)
    return logits.softmax(dim=-1)


def gather_logprobs(
    logprobs: torch.Tensor, sampled_token_ids: torch.Tensor, num_logprobs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From full logprobs [B, V]: (token ids [B, 1 + N], their logprobs [B, 1 + N], ranks [B]).

    Column 0 is the sampled token; the rank counts tokens strictly more likely than it, plus one.
    """
    num_logprobs = min(num_logprobs, logprobs.shape[1])
    top_logprobs, top_ids = logprobs.topk(num_logprobs, dim=-1)  # [B, N], descending
    sampled = sampled_token_ids[:, None]  # [B, 1]
    sampled_logprobs = logprobs.gather(1, sampled)  # [B, 1]
    ranks = (logprobs > sampled_logprobs).sum(dim=-1) + 1  # [B]
    token_ids = torch.cat([sampled, top_ids], dim=1)
    return token_ids, torch.cat([sampled_logprobs, top_logprobs], dim=1), ranks


__all__ = ["Sampler", "SamplerOutput", "constrain_logits", "gather_logprobs", "sampling_probs"]
