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
@pytest.mark.parametrize("head_size", [64, 40])  # 40: a tail shorter than one 16-lane vector
def test_cpp_writer_stores_the_reference_bytes(isa, head_size):
    x = rows(300, head_size=head_size, seed=3)  # more tokens than one parallel task
    slots = torch.randperm(512, generator=torch.Generator().manual_seed(1))[:300]
    by_torch, by_cpp = empty_cache(512, head_size=head_size), empty_cache(512, head_size=head_size)
    kv_int8.write_reference(by_torch, slots, x)
    cpu_extension.load().write_kv(by_cpp, slots, x)
    assert torch.equal(by_cpp, by_torch)


@needs_kernels
def test_cpp_writer_reads_strided_rows(isa):
    """K and V arrive as views into the fused qkv projection: rows with a token stride wider than a row."""
    qkv = torch.randn(20, 5, 64, generator=torch.Generator().manual_seed(2))
    values = qkv[:, 3:]  # [20, 2, 64], token stride 5 * 64
    slots = torch.arange(20).flip(0)
    by_torch, by_cpp = empty_cache(20, num_heads=2), empty_cache(20, num_heads=2)
    kv_int8.write_reference(by_torch, slots, values.contiguous())
    cpu_extension.load().write_kv(by_cpp, slots, values)
    assert torch.equal(by_cpp, by_torch)


@needs_kernels
def test_cpp_writer_refuses_a_slot_out_of_range_and_writes_nothing():
    cache = empty_cache(32)
    with pytest.raises(RuntimeError, match="slot out of range"):
        cpu_extension.load().write_kv(cache, torch.tensor([3, 32]), rows(2))
    assert not cache.any()


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_kernel", [False, True])
def test_gather_reads_rows_back_dequantized_per_kv_head(use_kernel, dtype, monkeypatch):
    if use_kernel and cpu_extension.load() is None:
        pytest.skip("C++ kernels not built (make install)")
    if not use_kernel:
        monkeypatch.setattr(cpu_extension, "load", lambda: None)
    x = rows(150, seed=6)
    cache = empty_cache(200)
    slots = torch.randperm(200, generator=torch.Generator().manual_seed(2))[:150]
    kv_int8.write_reference(cache, slots, x)
    order = torch.randperm(150, generator=torch.Generator().manual_seed(3))
    got = kv_int8.gather(cache, slots[order], dtype)
    expected = kv_int8.dequantize(cache[slots[order]]).transpose(0, 1).to(dtype)
    assert got.shape == (3, 150, 64) and got.dtype == dtype
    assert torch.equal(got, expected)
    float_cache = torch.randn(10, 3, 64)
    assert torch.equal(kv_int8.gather(float_cache, torch.tensor([4, 1]), dtype), float_cache[[4, 1]].transpose(0, 1).to(dtype))


@needs_kernels
def test_gather_refuses_a_slot_out_of_range():
    with pytest.raises(RuntimeError, match="slot out of range"):
        cpu_extension.load().gather_kv(empty_cache(8), torch.tensor([8]), torch.float32)
