"""Block-quantized weights: round trips within the analytic bound, packed layers equal to a dequantized
reference (inputs rounded to 8 bits, or to 16 and then nearly exact), bad shapes refused, and the bf16 copy
for batches (``batched_linears="bf16"``) taking over from its row threshold."""

from __future__ import annotations

import pytest
import torch

from corral.errors import QuantizationError
from corral.kernels.block_linear import fake_quantize_activations
from corral.layers.linear import Linear
from corral.quantization.blockwise import (
    BlockLinear,
    BlockMethod,
    BlockQuantized,
    keep_dense_copies_,
    quantize_int4,
    quantize_int8,
    set_activation_bits_,
)


def weight(rows: int = 24, cols: int = 256, seed: int = 0) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    w[3, 17] = 12.0  # an outlier widens only its own group
    w[5, :128] = 0.0  # a constant group: scale 0
    return w


# float16 keeps 11 significant bits: storing a scale or a min moves it by at most 2^-11 of itself
FLOAT16_RELATIVE = 2.0**-11


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_round_trip_within_half_a_step_plus_float16_rounding(group_size):
    """Guards int4 rounding with a bound computed from the weights alone (not from the stored scales)."""
    w = weight()
    blocks = quantize_int4(w, group_size)
    groups = w.view(w.shape[0], -1, group_size)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    step = (high - low) / 15
    # half a step, plus how far float16 storage of the min and of the step can move the grid's ends
    bound = step / 2 + FLOAT16_RELATIVE * (low.abs() + 16 * step)
    error = (blocks.dequantize() - w).view_as(groups).abs()
    assert (error <= bound.unsqueeze(2) + 1e-6).all()
    assert torch.equal(blocks.dequantize()[5, :128], torch.zeros(128))
    rows, cols = w.shape
    assert blocks.nbytes() == rows * cols // 2 + 2 * 2 * rows * cols // group_size


def test_int8_round_trip_within_half_a_step():
    """Guards int8 rounding with a bound computed from the weights alone (not from the stored scales)."""
    w = weight()
    blocks = quantize_int8(w, 32)
    step = w.view(24, -1, 32).abs().amax(dim=2).repeat_interleave(32, dim=1) / 127
    bound = step / 2 + FLOAT16_RELATIVE * 128 * step  # the largest |w| sits 127 stored steps out
    assert ((blocks.dequantize() - w).abs() <= bound + 1e-6).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_block_linear_equals_the_dequantized_reference_matmul(bits):
    w, bias = weight(), torch.randn(24)
    layer = BlockMethod("int4" if bits == 4 else "int8-blocks", linear_bits=bits).quantize(w, bias)
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(3))
    dequantized = layer.dequantized_weight()
    if bits == 8:
        reference = fake_quantize_activations(x) @ dequantized.T + bias
    else:  # the min term multiplies the exact activations, the scaled codes the quantized ones
        mins = layer.blocks().mins.float().repeat_interleave(32, dim=1)
        reference = fake_quantize_activations(x) @ (dequantized - mins).T + x @ mins.T + bias
    torch.testing.assert_close(layer.apply(x), reference, rtol=1e-4, atol=1e-4)
    # and close to the float product: activations lose at most half a step per block of 32
    assert (layer.apply(x) - (x @ w.T + bias)).abs().max() < 0.1 * (x @ w.T).abs().max()


def test_rows_cat_and_take():
    a, b = quantize_int4(weight(seed=1), 32), quantize_int4(weight(rows=8, seed=2), 32)
    both = BlockQuantized.cat_rows([a, b])
    assert both.shape == (32, 256)
    assert torch.equal(both.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    index = torch.tensor([31, 0, 5])
    assert torch.equal(both.take_rows(index).dequantize(), both.dequantize()[index])
    with pytest.raises(QuantizationError, match="different formats"):
        BlockQuantized.cat_rows([a, quantize_int8(weight(), 32)])


def test_tied_table_lookup_returns_dequantized_rows():
    table = BlockMethod("int4", linear_bits=4).quantize_table(weight())
    ids = torch.tensor([3, 3, 0])
    assert torch.equal(table.lookup(ids), table.dequantized_weight()[ids])
    assert table.weight.bits == 8  # tables stay at 8 bits


def test_bad_shapes_are_refused():
    with pytest.raises(QuantizationError, match="multiple of the group size"):
        quantize_int4(torch.randn(4, 48), 32)
    with pytest.raises(QuantizationError, match="group size must be one of"):
        quantize_int4(torch.randn(4, 96), 48)
    with pytest.raises(QuantizationError, match="2-D"):
        quantize_int8(torch.randn(4, 4, 32), 32)
    with pytest.raises(QuantizationError, match="float16 range"):
        quantize_int8(torch.full((2, 32), 1e7), 32)
    with pytest.raises(QuantizationError, match="group size"):
        BlockMethod("int4", linear_bits=4, group_size=16)
    assert isinstance(BlockMethod("int4", 4).quantize(torch.randn(8, 64), None), BlockLinear)
    with pytest.raises(QuantizationError, match="activation bits"):
        BlockMethod("int4", linear_bits=4, activation_bits=4)
    with pytest.raises(QuantizationError, match="activation bits"):
        BlockLinear(quantize_int4(torch.randn(8, 64), 32), None, activation_bits=12)


@pytest.mark.parametrize("bits", [4, 8])
def test_16_bit_activations_follow_the_float_product_closely(bits):
    w, bias = weight(), torch.randn(24)
    method = BlockMethod("int4" if bits == 4 else "int8-blocks", linear_bits=bits, activation_bits=16)
    layer = method.quantize(w, bias)
    assert layer.activation_bits == 16
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(3))
    exact = x @ layer.dequantized_weight().T + bias  # the weights' rounding is the only one left
    error_16 = (layer.apply(x) - exact).abs().max()
    layer.activation_bits = 8
    error_8 = (layer.apply(x) - exact).abs().max()
    assert error_16 < 1e-4 * exact.abs().max() and error_16 < error_8 / 50


def test_set_activation_bits_reaches_every_packed_layer():
    model = torch.nn.Sequential(Linear.from_weight(weight()), Linear.from_weight(weight(rows=8, seed=1)))
    for layer in model:
        layer.quantize_(BlockMethod("int4", linear_bits=4))
    assert [layer.packed.activation_bits for layer in model] == [8, 8]
    set_activation_bits_(model, 16)
    assert [layer.packed.activation_bits for layer in model] == [16, 16]
    with pytest.raises(QuantizationError, match="activation bits"):
        set_activation_bits_(model, 32)


@pytest.mark.parametrize("bits", [4, 8])
def test_dense_copy_runs_batches_from_its_threshold_and_packed_below(bits):
    w, bias = weight(), torch.randn(24)
    layer = BlockMethod("int4" if bits == 4 else "int8-blocks", linear_bits=bits).quantize(w, bias)
    x = torch.randn(12, 256, generator=torch.Generator().manual_seed(4))
    packed_rows = layer.apply(x)
    packed_bytes = layer.nbytes()
    layer.keep_dense_copy_(min_rows=8)
    assert layer.nbytes() == packed_bytes + 24 * 256 * 2  # 2 bytes a parameter
    assert torch.equal(layer.apply(x[:7]), packed_rows[:7])  # below the threshold: the block kernel
    # from it: the bf16 product of the dequantized weight, rounded as torch rounds it
    dense = layer.apply(x)
    bf16 = (x.bfloat16() @ layer.dequantized_weight().bfloat16().T).float() + bias
    torch.testing.assert_close(dense, bf16, rtol=2e-2, atol=2e-2)
    assert not torch.equal(dense, packed_rows)
    # and nearer the float product than the packed path's 8-bit activations
    exact = x @ layer.dequantized_weight().T + bias
    assert (dense - exact).abs().max() < (packed_rows - exact).abs().max()


def test_dense_copies_reach_every_packed_layer_once_with_the_wide_threshold_for_wide_ones():
    narrow, wide = Linear.from_weight(weight()), Linear.from_weight(weight(rows=64, seed=1))
    model = torch.nn.Sequential(narrow, wide)
    for layer in model:
        layer.quantize_(BlockMethod("int4", linear_bits=4))
    tied = Linear.from_packed(wide.packed)  # a tied LM head shares its table's packed weight
    model.append(tied)
    added = keep_dense_copies_(model, min_rows=16, min_rows_wide=4, wide=64)
    assert added == (24 + 64) * 256 * 2  # the shared weight copied once
    assert (narrow.packed.dense_min_rows, wide.packed.dense_min_rows) == (16, 4)
    assert tied.packed.dense is wide.packed.dense
