"""The int8 KV cache: rows round to within half a step, the C++ writer stores the torch reference's bytes,
and attention over int8 rows equals attention over their dequantized floats."""

from __future__ import annotations

import pytest
import torch

from corral.kernels import cpu_extension, kv_int8
from corral.kernels.paged_attention import paged_attention, paged_attention_reference

needs_kernels = pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install)")
BLOCK_SIZE = 4


def rows(num_tokens: int, num_heads: int = 3, head_size: int = 64, seed: int = 0) -> torch.Tensor:
    x = torch.randn(num_tokens, num_heads, head_size, generator=torch.Generator().manual_seed(seed))
    x[0, 0] = 0.0  # an all-zero row: scale 0, codes 0
    x[-1, -1] *= 1e4  # an outlier row
    return x


def empty_cache(num_slots: int, num_heads: int = 3, head_size: int = 64) -> torch.Tensor:
    return torch.zeros(num_slots, num_heads, kv_int8.row_width(head_size), dtype=torch.int8)


def test_rows_round_trip_within_half_a_step():
    x = rows(9)
    cache = empty_cache(16)
    slots = torch.tensor([15, 0, 3, 4, 5, 9, 1, 2, 7])
    kv_int8.write_reference(cache, slots, x)
    back = kv_int8.dequantize(cache.index_select(0, slots))
    step = x.abs().amax(dim=-1, keepdim=True) / 127
    assert ((back - x).abs() <= step / 2 * (1 + 1e-5) + 1e-30).all()
    assert torch.equal(back[0, 0], torch.zeros(64))
    untouched = torch.ones(16, dtype=torch.bool)
    untouched[slots] = False
    assert not cache[untouched].any()  # nothing written outside the given slots


@needs_kernels
def test_cpp_writer_stores_the_reference_bytes():
    x = rows(11, seed=3)
    slots = torch.randperm(32, generator=torch.Generator().manual_seed(1))[:11]
    by_torch, by_cpp = empty_cache(32), empty_cache(32)
    kv_int8.write_reference(by_torch, slots, x)
    cpu_extension.load().write_kv(by_cpp, slots, x)
    assert torch.equal(by_cpp, by_torch)
    with pytest.raises(RuntimeError, match="slot out of range"):
        cpu_extension.load().write_kv(by_cpp, torch.tensor([32]), x[:1])


def test_float_caches_are_written_as_they_are():
    x = rows(5)
    cache = torch.zeros(8, 3, 64)
    kv_int8.write_kv(cache, torch.tensor([7, 0, 1, 2, 3]), x)
    assert torch.equal(cache[7], x[0]) and torch.equal(cache[0:4], x[1:])


@pytest.mark.parametrize("use_kernel", [False, True])
def test_attention_over_int8_rows_equals_attention_over_their_floats(use_kernel):
    if use_kernel and cpu_extension.load() is None:
        pytest.skip("C++ kernels not built")
    context_lens = torch.tensor([5, 1, 13])
    num_blocks = 12
    generator = torch.Generator().manual_seed(2)
    keys, values = empty_cache(num_blocks * BLOCK_SIZE), empty_cache(num_blocks * BLOCK_SIZE)
    slots = torch.arange(num_blocks * BLOCK_SIZE)
    kv_int8.write_kv(keys, slots, rows(num_blocks * BLOCK_SIZE, seed=4))
    kv_int8.write_kv(values, slots, rows(num_blocks * BLOCK_SIZE, seed=5))
    block_tables = torch.randperm(num_blocks, generator=generator)[:12].view(3, 4)
    query = torch.randn(3, 9, 64, generator=generator)
    case = (query, keys, values, block_tables, torch.arange(3), context_lens, BLOCK_SIZE, 0.125)
    got = paged_attention(*case) if use_kernel else paged_attention_reference(*case)
    floats = (query, kv_int8.dequantize(keys), kv_int8.dequantize(values), *case[3:])
    torch.testing.assert_close(got, paged_attention_reference(*floats), rtol=1e-5, atol=1e-5)
