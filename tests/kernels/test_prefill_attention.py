"""The C++ prefill attention against causal attention in float64: whole prompts and chunks at the end of a
longer context, grouped-query heads, both head sizes, row and key counts off its tile sizes (32 rows, 64 keys)."""

from __future__ import annotations

import pytest
import torch

from corral.kernels import cpu_extension

EXTENSION = cpu_extension.load()
pytestmark = pytest.mark.skipif(EXTENSION is None or not EXTENSION.prefill_attention_supported(64),
                                reason="the prefill kernel runs on AVX-512 CPUs only (elsewhere corral uses SDPA)")


def causal_reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """query [n, H, D] at the last n positions of keys/values [KVH, ctx, D]."""
    n, num_heads, _ = query.shape
    num_kv_heads, ctx, _ = keys.shape
    group = num_heads // num_kv_heads
    k = keys.double().repeat_interleave(group, 0)
    v = values.double().repeat_interleave(group, 0)
    scores = query.double().transpose(0, 1) @ k.transpose(1, 2) * scale  # [H, n, ctx]
    hidden = torch.arange(ctx)[None, :] > torch.arange(n)[:, None] + (ctx - n)
    return (scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v).transpose(0, 1)


@pytest.mark.parametrize("query_len, context_len, num_heads, num_kv_heads, head_size", [
    (1, 1, 9, 3, 64),       # a one-token prompt
    (5, 5, 9, 3, 64),       # fewer rows than a register block
    (33, 33, 9, 3, 64),     # one row past a task's 32
    (512, 512, 9, 3, 64),   # the default model's heads, a 512-token prompt
    (100, 250, 4, 2, 128),  # a chunk after 150 cached tokens, key count off the 64-key tile
    (17, 700, 8, 8, 128),   # no grouping
    (64, 64, 2, 1, 64),
])
def test_matches_causal_attention(query_len, context_len, num_heads, num_kv_heads, head_size):
    generator = torch.Generator().manual_seed(query_len * 1000 + context_len)
    query = torch.randn(query_len, num_heads, head_size, generator=generator)
    keys = torch.randn(num_kv_heads, context_len, head_size, generator=generator) * 3  # peaked softmax rows
    values = torch.randn(num_kv_heads, context_len, head_size, generator=generator)
    scale = head_size**-0.5
    out = EXTENSION.prefill_attention(query, keys, values, scale)
    assert out.shape == query.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), causal_reference(query, keys, values, scale), atol=2e-5, rtol=1e-5)


def test_non_contiguous_inputs_are_read_as_their_values():
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(9, 40, 64, generator=generator).transpose(0, 1)  # [40, 9, 64], strided
    keys = torch.randn(70, 3, 64, generator=generator).transpose(0, 1)    # as kv_int8.gather of a float cache
    values = torch.randn(70, 3, 64, generator=generator).transpose(0, 1)
    out = EXTENSION.prefill_attention(query, keys, values, 0.125)
    torch.testing.assert_close(out.double(), causal_reference(query, keys, values, 0.125), atol=2e-5, rtol=1e-5)


def test_bad_input_is_refused():
    query, keys = torch.randn(4, 2, 80), torch.randn(1, 4, 80)
    assert not EXTENSION.prefill_attention_supported(80)
    with pytest.raises(RuntimeError, match="head size 64 or 128"):
        EXTENSION.prefill_attention(query, keys, keys, 1.0)
    with pytest.raises(RuntimeError, match="the queries must end the context"):
        EXTENSION.prefill_attention(torch.randn(5, 2, 64), torch.randn(1, 4, 64), torch.randn(1, 4, 64), 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        EXTENSION.prefill_attention(torch.randn(4, 2, 64).bfloat16(), torch.randn(1, 4, 64), torch.randn(1, 4, 64), 1.0)
    for num_kv_heads in (0, 3):  # no KV head (a division by zero, not an error, before); 2 heads over 3
        with pytest.raises(RuntimeError, match="shape mismatch"):
            EXTENSION.prefill_attention(torch.randn(4, 2, 64), torch.randn(num_kv_heads, 4, 64),
                                        torch.randn(num_kv_heads, 4, 64), 1.0)
