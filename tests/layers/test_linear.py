"""Linear: a float nn.Linear until packed; after quantize_ the float weight is gone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corral.layers.linear import Linear
from corral.quantization.int8 import Int8Method, fbgemm_available


def test_float_forward_is_nn_linear():
    layer = Linear(16, 8, bias=True)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.skipif(not fbgemm_available(), reason="needs torch's fbgemm engine")
def test_quantize_drops_the_float_weight_and_stays_close():
    layer = Linear.from_weight(torch.randn(32, 64))
    x = torch.randn(4, 64)
    expected = layer(x)
    layer.quantize_(Int8Method())
    assert layer.weight is None and list(layer.parameters()) == []
    assert "Int8DynamicLinear" in repr(layer)
    assert torch.linalg.norm(layer(x) - expected) < 0.02 * torch.linalg.norm(expected)
