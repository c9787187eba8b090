"""GPTQ int4: lower output error than round-to-nearest on correlated inputs, the same blocks when the
inputs are uncorrelated, a valid ``BlockQuantized`` always, bad arguments refused."""

from __future__ import annotations

import pytest
import torch

from corral.errors import QuantizationError
from corral.kernels.block_linear import unpack_int4
from corral.quantization.blockwise import BlockQuantized, quantize_int4
from corral.quantization.gptq import HessianAccumulator, gptq_int4


def weight(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def correlated_inputs(num_tokens: int = 512, width: int = 256, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator) / width**0.5
    x = torch.randn(num_tokens, width, generator=generator) @ mixing
    x[:, torch.arange(3, width, 67)] *= 10  # outlier channels, as in real activations
    return x


def hessian_of(x: torch.Tensor, batches: int = 4) -> torch.Tensor:
    accumulator = HessianAccumulator(x.shape[1])
    for part in x.chunk(batches):
        accumulator.add(part)
    assert accumulator.num_tokens == x.shape[0]
    return accumulator.hessian()


def output_error(x: torch.Tensor, w: torch.Tensor, blocks: BlockQuantized) -> float:
    return float((x @ w.T - x @ blocks.dequantize().T).norm())


def test_hessian_is_two_over_n_gram_matrix_in_batches():
    x = correlated_inputs(num_tokens=100, width=32)
    accumulator = HessianAccumulator(32)
    accumulator.add(x[:30])
    accumulator.add(x[30:].reshape(7, 10, 32))  # leading dimensions are flattened
    torch.testing.assert_close(accumulator.hessian(), 2 / 100 * x.T @ x, rtol=1e-5, atol=1e-5)
    with pytest.raises(QuantizationError, match="width"):
        accumulator.add(torch.zeros(4, 16))
    with pytest.raises(QuantizationError, match="no calibration inputs"):
        HessianAccumulator(32).hessian()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, 128])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(group_size, act_order):
    w, x = weight(), correlated_inputs()
    gptq = output_error(x, w, gptq_int4(w, hessian_of(x), group_size, act_order=act_order))
    rtn = output_error(x, w, quantize_int4(w, group_size))
    assert gptq < 0.8 * rtn  # measured about 0.6-0.65 over seeds and both group sizes


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_result_is_valid_int4_blocks_on_their_own_grid(group_size, act_order):
    w, x = weight(), correlated_inputs()
    blocks = gptq_int4(w, hessian_of(x), group_size, block_size=96, act_order=act_order)  # blocks not a multiple of 256
    rows, cols = w.shape
    assert (blocks.bits, blocks.group_size, blocks.shape) == (4, group_size, (rows, cols))
    assert blocks.values.dtype == torch.uint8 and blocks.values.shape == (rows, cols // 2)
    assert blocks.scales.dtype == blocks.mins.dtype == torch.float16
    assert blocks.scales.shape == blocks.mins.shape == (rows, cols // group_size)
    codes = unpack_int4(blocks.values)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    values = blocks.dequantize().view(rows, -1, group_size)
    low = blocks.mins.float().unsqueeze(2)
    high = low + 15 * blocks.scales.float().unsqueeze(2)
    assert (values >= low - 1e-6).all() and (values <= high + 1e-6).all()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, 128])
def test_uncorrelated_inputs_give_round_to_nearest(group_size, act_order):
    w = weight()
    # H = I: no error to spread, so every weight rounds to the nearest point of its group's grid; in order
    # that grid is round-to-nearest's, with act-order the searched one
    exact = gptq_int4(w, torch.eye(256), group_size, act_order=act_order)
    rtn = quantize_int4(w, group_size)
    if not act_order:
        for a, b in zip((exact.values, exact.scales, exact.mins), (rtn.values, rtn.scales, rtn.mins)):
            assert torch.equal(a, b)
    scale = exact.scales.float().repeat_interleave(group_size, dim=1)
    low = exact.mins.float().repeat_interleave(group_size, dim=1)
    nearest = ((w - low) / scale).round().clamp(0, 15)
    assert torch.equal(unpack_int4(exact.values).float(), nearest)
    # white noise: nearly diagonal H, no worse than round-to-nearest
    x = torch.randn(4096, 256, generator=torch.Generator().manual_seed(2))
    gptq = output_error(x, w, gptq_int4(w, hessian_of(x), group_size, act_order=act_order))
    assert gptq <= 1.05 * output_error(x, w, rtn)  # measured about 0.99


@pytest.mark.parametrize("act_order", [False, True])
def test_dead_input_column_gets_zero_weight_and_stays_finite(act_order):
    w, x = weight(), correlated_inputs()
    x[:, 40] = 0.0
    x[:, 192:224] = 0.0  # a whole dead group
    blocks = gptq_int4(w, hessian_of(x), 32, act_order=act_order)
    values = blocks.dequantize()
    assert torch.isfinite(values).all()
    assert torch.isfinite(blocks.scales.float()).all() and torch.isfinite(blocks.mins.float()).all()
    torch.testing.assert_close(values[:, 192:224], torch.zeros(64, 32))  # zero-scale groups at min 0
    assert output_error(x, w, blocks) < output_error(x, w, quantize_int4(w, 32))


def test_act_order_rounds_loud_columns_first_and_beats_columns_in_order():
    """With a few loud input channels late in the row, rounding them first lets the quiet ones absorb their
    error (GPTQ's act-order); in order, the loud columns' error has no column left to go to."""
    w, x = weight(), correlated_inputs()
    x[:, -8:] *= 30
    h = hessian_of(x)
    in_order = output_error(x, w, gptq_int4(w, h, 64))
    act_order = output_error(x, w, gptq_int4(w, h, 64, act_order=True))
    assert act_order < 0.8 * in_order


def test_singular_hessian_is_damped():
    w = weight()
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(3))  # rank 16 of 256
    assert torch.isfinite(gptq_int4(w, hessian_of(x, batches=1), 64).dequantize()).all()


def test_bad_arguments_are_refused():
    w, h = weight(), torch.eye(256)
    with pytest.raises(QuantizationError, match="multiple of the group size"):
        gptq_int4(weight(cols=96), torch.eye(96), 64)
    with pytest.raises(QuantizationError, match="group size must be one of"):
        gptq_int4(w, h, 16)
    with pytest.raises(QuantizationError, match="Hessian of shape"):
        gptq_int4(w, torch.eye(128), 32)
    with pytest.raises(QuantizationError, match="2-D"):
        gptq_int4(w.view(4, 16, 256), h, 32)
    bad = h.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(QuantizationError, match="non-finite"):
        gptq_int4(w, bad, 32)
    with pytest.raises(QuantizationError, match="not positive definite"):
        gptq_int4(w, -h, 32)
