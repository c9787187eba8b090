"""Repetition, presence and frequency penalties, applied to a whole batch at once.

Token histories arrive as padded [B, L] id tensors (pad id = vocab_size). Counting them with one
``scatter_add_`` into a [B, V + 1] buffer sends every pad into the spare last column, which is then
dropped, so no per-row or per-token Python loop is needed.
"""

from __future__ import annotations

import torch

from corral.sample.metadata import SamplingMetadata


def token_counts(token_ids: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] ids padded with ``vocab_size`` -> [B, vocab_size] occurrence counts."""
    num_rows = token_ids.shape[0]
    counts = torch.zeros(num_rows, vocab_size + 1, dtype=dtype, device=token_ids.device)
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=dtype))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Return penalised logits [B, V] (a new tensor when any penalty is on; ``logits`` is not modified).

    Semantics follow vLLM / the OpenAI API:
    - repetition (CTRL paper): for tokens seen in the prompt or output, positive logits are divided
      by the penalty and negative ones multiplied, so a penalty > 1 always makes the token less likely;
    - frequency: subtract ``penalty * count`` for each token's count in the output so far;
    - presence: subtract ``penalty`` once for every token present in the output so far.
    """
    if metadata.no_penalties:
        return logits
    assert metadata.output_token_ids is not None
    vocab_size = logits.shape[1]
    output_counts = token_counts(metadata.output_token_ids, vocab_size, logits.dtype)  # [B, V]
    output_mask = output_counts > 0  # [B, V]

    if metadata.repetition_penalties is not None:
        assert metadata.prompt_token_ids is not None
        prompt_mask = token_counts(metadata.prompt_token_ids, vocab_size, torch.int32) > 0  # [B, V]
        seen = prompt_mask | output_mask
        ones = torch.ones((), dtype=logits.dtype, device=logits.device)
        penalty = torch.where(seen, metadata.repetition_penalties.to(logits.dtype)[:, None], ones)  # [B, V]
        logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    if metadata.frequency_penalties is not None:
        logits = logits - metadata.frequency_penalties.to(logits.dtype)[:, None] * output_counts
    if metadata.presence_penalties is not None:
        logits = logits - metadata.presence_penalties.to(logits.dtype)[:, None] * output_mask.to(logits.dtype)
    return logits


__all__ = ["apply_penalties", "token_counts"]
