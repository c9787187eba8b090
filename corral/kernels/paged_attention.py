"""Decode attention over the paged KV cache: the C++ kernel when built, else the torch reference.

One query token per sequence. The cache is slot-major (``[num_slots, num_kv_heads, head_size]``, slot =
block id * block_size + offset); each sequence's block table lists its blocks in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels import cpu_extension


def paged_decode_attention_reference(
    query: torch.Tensor,  # [num_seqs, num_heads, head_size]
    key_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks]
    context_lens: torch.Tensor,  # [num_seqs]
    block_size: int,
    scale: float,
) -> torch.Tensor:  # [num_seqs, num_heads, head_size]
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[1]
    max_len = block_tables.shape[1] * block_size
    # Gather every sequence's blocks: index_select is several times faster than advanced indexing here.
    blocks = block_tables.reshape(-1)
    keys = key_cache.view(-1, block_size * num_kv_heads * head_size).index_select(0, blocks)
    values = value_cache.view(-1, block_size * num_kv_heads * head_size).index_select(0, blocks)
    keys = keys.view(num_seqs, max_len, num_kv_heads, head_size).transpose(1, 2)
    values = values.view(num_seqs, max_len, num_kv_heads, head_size).transpose(1, 2)
    mask = torch.arange(max_len, device=query.device)[None, :] < context_lens[:, None]
    # Query heads h = kv * group + g share KV head kv: [num_seqs, num_kv_heads, group, head_size]
    grouped = query.view(num_seqs, num_kv_heads, -1, head_size)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(num_seqs, num_heads, head_size)


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Same contract as the reference; reads K/V in place when the C++ kernel applies."""
    kernels = cpu_extension.load()
    if (
        kernels is not None
        and query.device.type == "cpu"
        and query.dtype == key_cache.dtype == torch.float32
        and key_cache.is_contiguous()
        and value_cache.is_contiguous()
    ):
        return kernels.paged_decode_attention(
            query, key_cache, value_cache, block_tables, context_lens, block_size, scale
        )
    return paged_decode_attention_reference(
        query, key_cache, value_cache, block_tables, context_lens, block_size, scale
    )
