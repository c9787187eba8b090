"""The C++ paged attention against the torch reference (and the reference against plain SDPA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corral.kernels import cpu_extension, kv_int8
from corral.kernels.paged_attention import paged_attention_reference
from corral.platform import cpu_flags

BLOCK_SIZE = 4
# every set of attention loops this CPU can run ("vector" everywhere, "avx512" for head sizes 64 and 128)
ISAS = cpu_extension.load().supported_paged_attention_isas() if cpu_extension.load() is not None else []



def paged_case(context_lens: list[int], num_heads: int = 6, num_kv_heads: int = 2, head_size: int = 16):
    """Random K/V for each sequence, scattered over shuffled blocks of a cache."""
    generator = torch.Generator().manual_seed(0)
    max_blocks = -(-max(context_lens) // BLOCK_SIZE)
    num_blocks = len(context_lens) * max_blocks + 3
    key_cache = torch.randn(num_blocks * BLOCK_SIZE, num_kv_heads, head_size, generator=generator)
    value_cache = torch.randn(num_blocks * BLOCK_SIZE, num_kv_heads, head_size, generator=generator)
    block_tables = torch.randperm(num_blocks, generator=generator)[: len(context_lens) * max_blocks]
    block_tables = block_tables.view(len(context_lens), max_blocks)
    query = torch.randn(len(context_lens), num_heads, head_size, generator=generator)
    return query, key_cache, value_cache, block_tables, torch.arange(len(context_lens)), torch.tensor(context_lens)


def int8_caches(key_cache: torch.Tensor, value_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float caches quantized into int8 rows (kernels/kv_int8.py)."""
    slots = torch.arange(key_cache.shape[0])
    shape = (*key_cache.shape[:2], kv_int8.row_width(key_cache.shape[2]))
    key_int8, value_int8 = torch.zeros(shape, dtype=torch.int8), torch.zeros(shape, dtype=torch.int8)
    kv_int8.write_reference(key_int8, slots, key_cache)
    kv_int8.write_reference(value_int8, slots, value_cache)
    return key_int8, value_int8


def dense_attention(query, key_cache, value_cache, block_tables, seq_of_query, context_lens):
    outs = []
    for s, n in zip(seq_of_query.tolist(), context_lens.tolist()):
        pos = torch.arange(n)
        slots = block_tables[s, pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
        keys, values = key_cache[slots].transpose(0, 1), value_cache[slots].transpose(0, 1)
        q = query[len(outs)][:, None, :]  # [num_heads, 1, head_size]
        out = F.scaled_dot_product_attention(q[None], keys[None], values[None], enable_gqa=True)
        outs.append(out[0, :, 0])
    return torch.stack(outs)


CONTEXTS = [[1], [5, 1, 12, 8], [33, 2], [16, 17, 47, 48]]


@pytest.mark.parametrize("context_lens", CONTEXTS)
def test_reference_matches_dense_attention(context_lens):
    case = paged_case(context_lens)
    expected = dense_attention(*case)
    actual = paged_attention_reference(*case, BLOCK_SIZE, case[0].shape[-1] ** -0.5)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")
@pytest.mark.parametrize("context_lens", CONTEXTS)
@pytest.mark.parametrize("heads", [(6, 2, 16), (9, 3, 64), (4, 4, 8), (4, 1, 128)])
@pytest.mark.parametrize("int8_cache", [False, True])
def test_cpp_kernel_matches_reference(isa, context_lens, heads, int8_cache):
    case = paged_case(context_lens, *heads)
    if int8_cache:
        case = (case[0], *int8_caches(case[1], case[2]), *case[3:])
    scale = heads[2] ** -0.5
    expected = paged_attention_reference(*case, BLOCK_SIZE, scale)
    actual = cpu_extension.load().paged_attention(*case, BLOCK_SIZE, scale)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")
def test_cpp_kernel_rejects_bad_input():
    query, key_cache, value_cache, block_tables, seqs, _ = paged_case([5])
    kernel = cpu_extension.load().paged_attention
    with pytest.raises(RuntimeError, match="context length"):
        kernel(query, key_cache, value_cache, block_tables, seqs, torch.tensor([999]), BLOCK_SIZE, 1.0)
    with pytest.raises(RuntimeError, match="sequence index"):
        kernel(query, key_cache, value_cache, block_tables, torch.tensor([1]), torch.tensor([5]), BLOCK_SIZE, 1.0)
    with pytest.raises(RuntimeError, match="float32 queries"):
        kernel(query.double(), key_cache, value_cache, block_tables, seqs, torch.tensor([5]), BLOCK_SIZE, 1.0)
    with pytest.raises(RuntimeError, match="float32 or int8 cache"):
        kernel(query, key_cache.half(), value_cache.half(), block_tables, seqs, torch.tensor([5]), BLOCK_SIZE, 1.0)


def test_several_queries_of_one_sequence_see_their_own_prefixes():
    """Prefill tokens as rows (batch-invariant mode): row i of a sequence attends to its first i + 1 tokens."""
    query, key_cache, value_cache, block_tables, _, _ = paged_case([9], num_heads=4, num_kv_heads=2, head_size=8)
    query = torch.randn(9, 4, 8, generator=torch.Generator().manual_seed(3))
    seqs, lens = torch.zeros(9, dtype=torch.long), torch.arange(1, 10)
    case = (query, key_cache, value_cache, block_tables, seqs, lens)
    torch.testing.assert_close(paged_attention_reference(*case, BLOCK_SIZE, 8**-0.5), dense_attention(*case),
                               rtol=1e-5, atol=1e-5)
    if cpu_extension.load() is not None:
        rows = cpu_extension.load().paged_attention(*case, BLOCK_SIZE, 8**-0.5)
        one = cpu_extension.load().paged_attention(query[4:5], key_cache, value_cache, block_tables, seqs[:1],
                                                   lens[4:5], BLOCK_SIZE, 8**-0.5)
        assert torch.equal(rows[4:5], one)  # a row's result does not depend on the other rows


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")
@pytest.mark.parametrize("int8_cache", [False, True])
def test_rows_sharing_their_sequences_reads_equal_each_row_alone(isa, int8_cache):
    """Draft checks: consecutive rows of one sequence share each K/V read (in runs the kernel may split);
    every row's result is bit-identical to the row computed alone, and matches the reference."""
    query, key_cache, value_cache, block_tables, _, _ = paged_case([40, 40], num_heads=9, num_kv_heads=3, head_size=64)
    if int8_cache:
        key_cache, value_cache = int8_caches(key_cache, value_cache)
    seqs = torch.tensor([0] * 7 + [1] * 3 + [0])
    lens = torch.tensor([20, 21, 22, 23, 24, 25, 26, 30, 31, 32, 40])
    query = torch.randn(len(seqs), 9, 64, generator=torch.Generator().manual_seed(5))
    kernel = cpu_extension.load().paged_attention
    rows = kernel(query, key_cache, value_cache, block_tables, seqs, lens, BLOCK_SIZE, 0.125)
    for i in range(len(seqs)):
        alone = kernel(query[i : i + 1], key_cache, value_cache, block_tables, seqs[i : i + 1], lens[i : i + 1],
                       BLOCK_SIZE, 0.125)
        assert torch.equal(rows[i : i + 1], alone)
    expected = paged_attention_reference(query, key_cache, value_cache, block_tables, seqs, lens, BLOCK_SIZE, 0.125)
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")
def test_unknown_or_unsupported_attention_loops_are_refused():
    extension = cpu_extension.load()
    with pytest.raises(RuntimeError, match="unknown loops"):
        extension.set_paged_attention_isa("avx1024")
    assert extension.paged_attention_isa() in ISAS
    # where the CPU has AVX-512, its loops are there and are the ones in use
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags():
        assert ISAS == ["vector", "avx512"] and extension.paged_attention_isa() == "avx512"
