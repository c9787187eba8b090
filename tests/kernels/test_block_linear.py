"""The block-quantized linear kernel: equal to its torch reference within float summation order (with 8- and
16-bit activations), each row independent of its batch, and the nibble packing reversible."""

from __future__ import annotations

import pytest
import torch

from corral.kernels import cpu_extension
from corral.kernels.block_linear import (
    RESIDUAL_RADIX,
    block_linear,
    block_linear_reference,
    deinterleave_rows,
    fake_quantize_activations,
    interleave_rows,
    pack_int4,
    unpack_int4,
)

needs_kernels = pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install)")
# every set of loops this CPU can run (portable, avx2, avx512_vnni): each must give the reference's result
ISAS = cpu_extension.load().supported_block_linear_isas() if cpu_extension.load() is not None else []


@pytest.fixture(params=ISAS)
def isa(request):
    extension = cpu_extension.load()
    widest = extension.block_linear_isa()
    extension.set_block_linear_isa(request.param)
    yield request.param
    extension.set_block_linear_isa(widest)


def random_blocks(bits: int, rows: int, cols: int, group_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    if bits == 4:
        values = pack_int4(torch.randint(0, 16, (rows, cols), generator=generator))
        mins = (-torch.rand(rows, cols // group_size, generator=generator) * 0.1).half()
    else:
        values = torch.randint(-127, 128, (rows, cols), generator=generator).to(torch.int8)
        mins = None
    scales = (torch.rand(rows, cols // group_size, generator=generator) * 0.02).half()
    return values, scales, mins


def activations(num_rows: int, cols: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(num_rows, cols, generator=torch.Generator().manual_seed(seed))
    if num_rows > 2:
        x[1] *= 1e3  # an outlier row
        x[2] = 0.0  # an all-zero row: scale 0, codes 0
    return x


def test_pack_int4_round_trips_and_uses_llama_cpp_nibble_order():
    codes = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(0))
    packed = pack_int4(codes)
    assert packed.shape == (3, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 16]) << 4  # element j low, j + 16 high


def test_fake_quantized_activations_are_within_half_a_step_per_block():
    x = activations(5, 96)
    step = x.view(5, 3, 32).abs().amax(dim=2, keepdim=True) / 127
    error = (fake_quantize_activations(x).view(5, 3, 32) - x.view(5, 3, 32)).abs()
    assert (error <= step / 2 * (1 + 1e-6)).all()


def test_16_bit_activations_are_within_half_a_residual_step():
    x = activations(5, 96)
    step = x.view(5, 3, 32).abs().amax(dim=2, keepdim=True) / 127 / RESIDUAL_RADIX
    error = (fake_quantize_activations(x, 16).view(5, 3, 32) - x.view(5, 3, 32)).abs()
    assert (error <= step / 2 * (1 + 1e-3) + 1e-6 * x.view(5, 3, 32).abs()).all()
    assert float(error.max()) > 0  # rounded, not copied


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
def test_16_bit_activations_bring_the_product_close_to_exact(bits):
    values, scales, mins = random_blocks(bits, 64, 576, 64)
    weights = interleave_rows(values, scales, mins, bits, 64)
    codes = unpack_int4(values) if bits == 4 else values
    dense = codes.float() * scales.float().repeat_interleave(64, dim=1)
    if mins is not None:
        dense += mins.float().repeat_interleave(64, dim=1)
    x = torch.randn(7, 576, generator=torch.Generator().manual_seed(3))
    exact = x @ dense.T
    error_8 = (block_linear(x, weights, None) - exact).abs().max()
    error_16 = (block_linear(x, weights, None, activation_bits=16) - exact).abs().max()
    assert error_16 < error_8 / 50


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [8, 45])
def test_interleaving_rows_round_trips_whole_and_by_row(bits, rows):
    values, scales, mins = random_blocks(bits, rows, 128, 64)
    weights = interleave_rows(values, scales, mins, bits, 64)
    assert weights.values.shape[0] == (rows + 7) // 8 and weights.out_features == rows
    # chunk 0 of row 1 sits right after chunk 0 of row 0: 4 bytes of each of the 8 rows side by side
    assert torch.equal(weights.values[0, 4:8], values[1, :4])
    for got, want in zip(deinterleave_rows(weights), (values, scales, mins)):
        assert (got is None and want is None) or torch.equal(got, want)
    index = torch.tensor([rows - 1, 0, 3, 3])
    for got, want in zip(deinterleave_rows(weights, index), (values, scales, mins)):
        assert (got is None and want is None) or torch.equal(got, want[index])


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    "group_size, num_rows, cols",
    # every group size with every width it divides
    [(g, rows, cols) for g in (32, 64, 128) for rows, cols in ((1, 576), (5, 256), (9, 384), (70, 128)) if cols % g == 0],
)
@pytest.mark.parametrize("out_features", [48, 45])  # 45: the last group of 8 rows is padding in part
@pytest.mark.parametrize("activation_bits", [8, 16])
def test_kernel_matches_the_reference(isa, bits, group_size, num_rows, cols, out_features, activation_bits):
    values, scales, mins = random_blocks(bits, out_features, cols, group_size)
    bias = torch.randn(out_features)
    x = activations(num_rows, cols)
    got = block_linear(x, interleave_rows(values, scales, mins, bits, group_size), bias, activation_bits)
    want = block_linear_reference(x, values, scales, mins, bias, bits, group_size, activation_bits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("activation_bits", [8, 16])
def test_each_row_is_bit_identical_alone_and_in_any_batch(isa, bits, activation_bits):
    weights = interleave_rows(*random_blocks(bits, 40, 576, 32), bits, 32)
    x = activations(11, 576)
    batch = block_linear(x, weights, None, activation_bits)
    for i in range(x.shape[0]):
        alone = block_linear(x[i : i + 1], weights, None, activation_bits)
        assert torch.equal(alone[0], batch[i])
    assert torch.equal(block_linear(x[3:10], weights, None, activation_bits), batch[3:10])


SIMD_ISAS = [name for name in ISAS if name != "portable"]


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("activation_bits", [8, 16])
def test_every_instruction_set_gives_bit_identical_results(bits, activation_bits):
    """The SIMD loops sum the same integers and round the floats alike: which one runs is not observable.
    (The portable loop rounds differently; it is compared bit for bit on exact inputs below.)"""
    if len(SIMD_ISAS) < 2:
        pytest.skip(f"only {', '.join(SIMD_ISAS) or 'the portable loop'} on this host: no second SIMD loop to compare")
    extension = cpu_extension.load()
    widest = extension.block_linear_isa()
    weights = interleave_rows(*random_blocks(bits, 45, 384, 64), bits, 64)
    x = activations(9, 384)
    results = {}
    try:
        for name in SIMD_ISAS:
            extension.set_block_linear_isa(name)
            assert extension.block_linear_isa() == name
            results[name] = block_linear(x, weights, None, activation_bits)
    finally:
        extension.set_block_linear_isa(widest)
    first, *others = SIMD_ISAS
    for name in others:
        assert torch.equal(results[name], results[first]), f"{name} differs from {first}"


def exact_case(bits: int, seed: int = 0):
    """Weights and activations on which every float operation of the kernel is exact, so every loop, whatever
    its summation order or FMA use, must return exactly ``x @ W.T``.

    Per block of 32, ``x`` is an integer in -7..7 (one of them +-127) times ``254 * 2**-10``: the block's step
    is ``254 * 2**-10``, so both the 8-bit codes and the 16-bit ones (residual 0) are the integers themselves.
    Scales are powers of two (2**-8 or 2**-7 per group of 64) and int4 mins are -8 scales; int8 codes are in
    -31..31. Every product and partial sum is then a multiple of ``2**-17`` below ``2**7``: at most 24
    significant bits, so exact in float32 in any order.
    """
    rows, cols, group_size = 45, 128, 64
    generator = torch.Generator().manual_seed(seed)
    integers = torch.randint(-7, 8, (9, cols), generator=generator)
    peaks = torch.arange(0, cols, 32)
    integers[:, peaks] = 127 * (1 - 2 * torch.randint(0, 2, (9, peaks.numel()), generator=generator))
    x = integers.float() * (254 * 2.0**-10)
    exponents = torch.randint(-8, -6, (rows, cols // group_size), generator=generator)
    scales = torch.pow(2.0, exponents.double()).half()
    if bits == 4:
        codes = torch.randint(0, 16, (rows, cols), generator=generator)
        values, mins = pack_int4(codes), (-8 * scales.float()).half()
    else:
        codes = torch.randint(-31, 32, (rows, cols), generator=generator)
        values, mins = codes.to(torch.int8), None
    dense = codes.double() * scales.double().repeat_interleave(group_size, dim=1)
    if mins is not None:
        dense += mins.double().repeat_interleave(group_size, dim=1)
    exact = (x.double() @ dense.T).float()
    return x, interleave_rows(values, scales, mins, bits, group_size), exact


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("activation_bits", [8, 16])
def test_every_loop_is_exact_where_float_arithmetic_is(isa, bits, activation_bits):
    """On inputs where no float operation rounds, each loop (portable included) returns exactly x @ W.T: the
    loops agree bit for bit with each other and with the exact product, which catches any integer slip (a
    nibble, a lane, a block or a group's scale taken from the wrong place) that a tolerance could hide."""
    x, weights, exact = exact_case(bits)
    got = block_linear(x, weights, None, activation_bits)
    assert torch.equal(got, exact), f"{isa}: {int((got != exact).sum())} of {exact.numel()} outputs differ"


@needs_kernels
def test_unsupported_instruction_sets_are_refused():
    extension = cpu_extension.load()
    with pytest.raises(RuntimeError, match="unknown loops"):
        extension.set_block_linear_isa("avx1024")
    assert extension.block_linear_isa() in ISAS


@needs_kernels
def test_kernel_refuses_mismatched_shapes():
    values, scales, mins = random_blocks(4, 8, 64, 32)
    weights = interleave_rows(values, scales, mins, 4, 32)
    with pytest.raises(RuntimeError, match="values shape"):
        block_linear(torch.randn(2, 128), weights, None)
    with pytest.raises(RuntimeError, match="mins"):
        block_linear(torch.randn(2, 64), weights._replace(mins=None), None)
    with pytest.raises(RuntimeError, match="groups of 8 rows"):
        block_linear(torch.randn(2, 64), weights._replace(out_features=9), None)
    with pytest.raises(RuntimeError, match="8- or 16-bit activations"):
        block_linear(torch.randn(2, 64), weights, None, activation_bits=12)
