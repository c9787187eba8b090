"""Int8 (fbgemm) packed linear: error within the analytic bound, and rows independent of their batch."""

from __future__ import annotations

import pytest
import torch

from corral.errors import QuantizationError
from corral.quantization.int8 import Int8Method, fbgemm_available

pytestmark = pytest.mark.skipif(not fbgemm_available(), reason="needs torch's fbgemm engine")


def weight_and_inputs(out_features: int = 96, in_features: int = 64):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    x = torch.randn(6, in_features, generator=generator)
    x[1] *= 1000.0  # an outlier row must not coarsen the others
    x[2] = 0.0
    x[3, 5] = 50.0  # an outlier channel within one row
    return weight, bias, x


@pytest.mark.parametrize("reduce_range", [True, False])
def test_weights_round_trip_within_half_a_step(reduce_range):
    weight, bias, _ = weight_and_inputs()
    method = Int8Method()
    method.reduce_range = reduce_range
    packed = method.quantize(weight, bias)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((packed.dequantized_weight() - weight).abs() <= step / 2 + 1e-6).all()
    assert packed.nbytes() < weight.nbytes / 3


def test_output_matches_dequantized_reference_within_the_activation_bound():
    # The method's own choice for this CPU: full 8-bit activations saturate fbgemm's int16 sums without
    # VNNI, and this bound catches it.
    weight, bias, x = weight_and_inputs()
    method = Int8Method()
    reduce_range = method.reduce_range
    packed = method.quantize(weight, bias)
    dequantized = packed.dequantized_weight()
    reference = x @ dequantized.T + bias
    # Each row is scaled into [-1, 1] and quantized with 2 / (levels - 1) steps, so each element is off
    # by at most absmax / (levels - 1), weighted by the row of W it meets.
    levels = 128 if reduce_range else 256
    row_absmax = x.abs().amax(dim=1, keepdim=True)
    bound = row_absmax / (levels - 1) * dequantized.abs().sum(dim=1)[None, :]
    error = (packed.apply(x) - reference).abs()
    assert (error <= bound * 1.001 + 1e-3 * (1 + row_absmax)).all()
    torch.testing.assert_close(packed.apply(x)[2], bias)  # a zero row gives exactly the bias
    assert error[0].max() < 0.05 * reference[0].abs().max()  # and the error is small in practice


def test_each_row_is_bit_identical_alone_and_in_any_batch():
    weight, _, x = weight_and_inputs()
    packed = Int8Method().quantize(weight, None)
    batch = packed.apply(x)
    for i in range(x.shape[0]):
        assert torch.equal(packed.apply(x[i : i + 1]), batch[i : i + 1])
    assert torch.equal(packed.apply(x.flip(0)), batch.flip(0))


def test_bad_weights_raise_quantization_error():
    with pytest.raises(QuantizationError, match="2-D"):
        Int8Method().quantize(torch.zeros(2, 3, 4), None)


def test_input_scales_pack_the_scaled_weight_exactly_across_row_blocks(monkeypatch):
    from corral.quantization import int8

    monkeypatch.setattr(int8, "_ROWS_PER_BLOCK", 40)  # 96 rows: three blocks, the last one short
    weight, bias, x = weight_and_inputs()
    scales = torch.rand(weight.shape[1], generator=torch.Generator().manual_seed(1)) + 0.5
    method = Int8Method()
    folded = method.quantize(weight, bias, input_scales=scales)
    assert torch.equal(folded.apply(x), method.quantize(weight * scales, bias).apply(x))


def test_int8_rows_lookup_within_half_a_step(monkeypatch):
    from corral.quantization import int8

    monkeypatch.setattr(int8, "_ROWS_PER_BLOCK", 7)
    table = torch.randn(50, 32, generator=torch.Generator().manual_seed(2))
    table[3] *= 100.0  # rows are scaled on their own
    rows = Int8Method().quantize_table(table)
    ids = torch.tensor([3, 0, 49, 3])
    step = table[ids].abs().amax(dim=1, keepdim=True) / 127
    assert ((rows.lookup(ids) - table[ids]).abs() <= step / 2 + 1e-6).all()
    assert rows.nbytes() < table.nbytes / 3
