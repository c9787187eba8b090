"""Attention over the paged KV cache, one query token per row: the C++ kernel when built, else the torch
reference.

The cache is slot-major (``[num_slots, num_kv_heads, head_size]``, slot = block id * block_size + offset;
int8 caches hold ``head_size + 4`` bytes per row, see ``kernels/kv_int8.py``);
each sequence's block table lists its blocks in order. Row ``i`` of the query belongs to sequence
``seq_of_query[i]`` and attends to its first ``context_lens[i]`` tokens: a decode is one row, and in
batch-invariant mode every prefill token is one row too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels import cpu_extension, kv_int8


def paged_attention_reference(
    query: torch.Tensor,  # [num_queries, num_heads, head_size]
    key_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks]
    seq_of_query: torch.Tensor,  # [num_queries]
    context_lens: torch.Tensor,  # [num_queries]
    block_size: int,
    scale: float,
) -> torch.Tensor:  # [num_queries, num_heads, head_size]
    num_queries, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[1]
    max_blocks = -(-int(context_lens.max()) // block_size)
    max_len = max_blocks * block_size
    tables = block_tables.index_select(0, seq_of_query)[:, :max_blocks]
    # Gather every query's blocks: index_select is several times faster than advanced indexing here.
    blocks = tables.reshape(-1)
    keys = key_cache.view(-1, block_size * key_cache[0].numel()).index_select(0, blocks)
    values = value_cache.view(-1, block_size * value_cache[0].numel()).index_select(0, blocks)
    row = key_cache.shape[-1]
    keys = keys.view(num_queries, max_len, num_kv_heads, row)
    values = values.view(num_queries, max_len, num_kv_heads, row)
    if kv_int8.is_int8(key_cache):
        keys, values = kv_int8.dequantize(keys), kv_int8.dequantize(values)
    keys, values = keys.transpose(1, 2), values.transpose(1, 2)
    mask = torch.arange(max_len, device=query.device)[None, :] < context_lens[:, None]
    # Query heads h = kv * group + g share KV head kv: [num_queries, num_kv_heads, group, head_size]
    grouped = query.view(num_queries, num_kv_heads, -1, head_size)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(num_queries, num_heads, head_size)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_of_query: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Same contract as the reference; reads K/V in place when the C++ kernel applies."""
    kernels = cpu_extension.load()
    if (
        kernels is not None
        and query.device.type == "cpu"
        and query.dtype == torch.float32
        and key_cache.dtype in (torch.float32, torch.int8)
        and key_cache.is_contiguous()
        and value_cache.is_contiguous()
    ):
        return kernels.paged_attention(
            query, key_cache, value_cache, block_tables, seq_of_query, context_lens, block_size, scale
        )
    return paged_attention_reference(
        query, key_cache, value_cache, block_tables, seq_of_query, context_lens, block_size, scale
    )
