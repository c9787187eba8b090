"""AttentionMetadata: where each token of a step reads and writes K/V in the paged cache.

A step's tokens are laid out decodes first (one token per sequence), then prefill chunks
(a run of consecutive tokens per sequence). Built once per step by the engine's input builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillChunk:
    """One sequence's chunk of new tokens: queries ``[query_start, query_start + query_len)``."""

    query_start: int
    query_len: int
    context_len: int  # tokens in the cache after this step (cached prefix + this chunk)
    kv_slots: torch.Tensor  # [context_len] cache slots of positions 0 .. context_len - 1


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] cache slot written by each token's K/V
    block_tables: torch.Tensor  # [num_seqs, max_blocks] the step's sequences, in token order
    seq_of_token: torch.Tensor  # [num_tokens] row of each token's sequence in block_tables
    context_lens: torch.Tensor  # [num_tokens] tokens each token attends to: its position + 1
    num_decode_tokens: int
    prefills: list[PrefillChunk]
