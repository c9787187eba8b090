"""The paged torch attention against dense causal attention over each sequence's full K/V."""

import pytest
import torch

from corral.kernels import cpu_extension
from corral.layers.attention.metadata import AttentionMetadata, PrefillChunk
from corral.layers.attention.torch_paged import TorchPagedAttention

NUM_HEADS, NUM_KV_HEADS, BLOCK_SIZE, NUM_BLOCKS = 6, 2, 4, 40
_EXTENSION = cpu_extension.load()
# head size 64 takes the C++ prefill kernel where it runs (AVX-512), 8 always takes SDPA
PREFILL_KERNEL_RUNS = _EXTENSION is not None and _EXTENSION.prefill_attention_supported(64)


def dense_attention(q, k, v):
    # q: [n, H, D] for the last n positions; k, v: [ctx, KVH, D]
    group = NUM_HEADS // NUM_KV_HEADS
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    n, ctx = q.shape[0], k.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    q_pos = torch.arange(n)[:, None] + ctx - n
    scores = scores.masked_fill(torch.arange(ctx)[None, :] > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, -1)


@pytest.mark.parametrize("head_size", [8, 64])
@pytest.mark.parametrize("batch_invariant, prefill_dtype", [(False, None), (True, None), (False, torch.bfloat16)])
def test_mixed_decodes_and_chunks_match_dense_attention(batch_invariant, prefill_dtype, head_size):
    HEAD_SIZE = head_size
    torch.manual_seed(0)
    # (tokens already cached, new tokens this step): two decodes, a fresh prompt, a chunk after a prefix.
    seqs = [(9, 1), (4, 1), (0, 7), (6, 5)]
    blocks = torch.randperm(NUM_BLOCKS).tolist()
    kv_cache = torch.zeros(2, NUM_BLOCKS * BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    tables, full_k, full_v = [], [], []
    for cached, new in seqs:
        num = -(-(cached + new) // BLOCK_SIZE)
        tables.append([blocks.pop() for _ in range(num)])
        full_k.append(torch.randn(cached + new, NUM_KV_HEADS, HEAD_SIZE))
        full_v.append(torch.randn(cached + new, NUM_KV_HEADS, HEAD_SIZE))

    def slots(table, positions):
        return torch.tensor([table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in positions], dtype=torch.long)

    # Pre-fill the cache with the already-computed tokens.
    for (cached, _), table, k, v in zip(seqs, tables, full_k, full_v):
        s = slots(table, range(cached))
        kv_cache[0, s], kv_cache[1, s] = k[:cached], v[:cached]

    queries = [torch.randn(new, NUM_HEADS, HEAD_SIZE) for _, new in seqs]
    slot_mapping = torch.cat([slots(t, range(c, c + n)) for (c, n), t in zip(seqs, tables)])
    prefills, start = [], 2
    for (cached, new), table in zip(seqs[2:], tables[2:]):
        prefills.append(PrefillChunk(start, new, cached + new, slots(table, range(cached + new))))
        start += new
    max_blocks = max(len(t) for t in tables)
    seq_of_token = torch.cat([torch.full((n,), i) for i, (_, n) in enumerate(seqs)])
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping,
        block_tables=torch.tensor([t + [0] * (max_blocks - len(t)) for t in tables]),
        seq_of_token=seq_of_token,
        context_lens=torch.cat([torch.arange(c + 1, c + n + 1) for c, n in seqs]),
        num_decode_tokens=2,
        prefills=prefills,
    )
    backend = TorchPagedAttention(
        NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, batch_invariant=batch_invariant, prefill_dtype=prefill_dtype
    )
    new_k = torch.cat([k[c:] for (c, _), k in zip(seqs, full_k)])
    new_v = torch.cat([v[c:] for (c, _), v in zip(seqs, full_v)])
    uses_kernel = backend._prefill_kernel(torch.device("cpu")) is not None
    assert uses_kernel == (PREFILL_KERNEL_RUNS and head_size == 64 and prefill_dtype is None)
    out = backend.forward(torch.cat(queries), new_k, new_v, kv_cache, metadata)

    expected = torch.cat([dense_attention(q, k, v) for q, k, v in zip(queries, full_k, full_v)])
    assert out.dtype == torch.float32
    if prefill_dtype is None:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    else:  # decodes exact, prefill chunks (rows 2 on) within bf16 rounding, and not exact: the cast is in effect
        torch.testing.assert_close(out[:2], expected[:2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[2:], expected[2:], atol=3e-2, rtol=3e-2)
        assert not torch.allclose(out[2:], expected[2:], atol=1e-5, rtol=1e-5)
