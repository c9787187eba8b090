"""The per-row scaling around the int8 linear: the C++ kernels equal the torch reference bit for bit."""

from __future__ import annotations

import pytest
import torch

from corral.kernels import cpu_extension
from corral.kernels.row_scaling import (
    pinning_row,
    rescale_rows,
    rescale_rows_reference,
    unit_rows_with_pin,
    unit_rows_with_pin_reference,
)


def rows(num_rows: int, width: int) -> torch.Tensor:
    x = torch.randn(num_rows, width, generator=torch.Generator().manual_seed(num_rows * 1000 + width))
    if num_rows > 2:
        x[1] *= 1e4
        x[2] = 0.0  # an all-zero row divides by the floor, not by zero
    return x


def test_reference_normalizes_each_row_and_appends_the_pin():
    x = rows(5, 12)
    normalized, absmax = unit_rows_with_pin_reference(x)
    assert normalized.shape == (6, 12) and absmax.shape == (5, 1)
    assert torch.equal(normalized[-1:], pinning_row(12))
    assert torch.equal(normalized[2], torch.zeros(12))
    assert torch.allclose(normalized[:-1].abs().amax(dim=1)[[0, 1, 3, 4]], torch.ones(4))
    y = torch.cat((x, torch.full((1, 12), 7.0)))
    assert torch.equal(rescale_rows_reference(y.clone(), absmax, None), x * absmax)


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")
@pytest.mark.parametrize("num_rows, width", [(1, 576), (3, 64), (37, 1536), (300, 96), (1, 1)])
def test_kernels_equal_the_reference_bit_for_bit(num_rows, width):
    x = rows(num_rows, width)
    normalized, absmax = unit_rows_with_pin(x)
    expected_normalized, expected_absmax = unit_rows_with_pin_reference(x)
    assert torch.equal(normalized, expected_normalized) and torch.equal(absmax, expected_absmax)

    y = torch.randn(num_rows + 1, 40, generator=torch.Generator().manual_seed(7))
    bias = torch.randn(40, generator=torch.Generator().manual_seed(8))
    for b in (None, bias):
        assert torch.equal(rescale_rows(y.clone(), absmax, b), rescale_rows_reference(y.clone(), absmax, b))


def test_fallback_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setattr(cpu_extension, "load", lambda: None)
    x = rows(4, 16)
    normalized, absmax = unit_rows_with_pin(x)
    assert torch.equal(normalized, unit_rows_with_pin_reference(x)[0])
    y = torch.randn(5, 8)
    assert torch.equal(rescale_rows(y.clone(), absmax, None), rescale_rows_reference(y.clone(), absmax, None))
