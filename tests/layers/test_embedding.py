"""Embedding: F.embedding until packed; after quantize_ the float table is gone and lookups stay close."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corral.layers.embedding import Embedding
from corral.quantization.int8 import Int8Method, fbgemm_available


def test_float_lookup_is_f_embedding():
    layer = Embedding(20, 8)
    torch.nn.init.normal_(layer.weight)
    ids = torch.tensor([4, 0, 19, 4])
    assert torch.equal(layer(ids), F.embedding(ids, layer.weight))


@pytest.mark.skipif(not fbgemm_available(), reason="int8 method needs fbgemm")
def test_quantize_drops_the_float_table():
    layer = Embedding(20, 8)
    torch.nn.init.normal_(layer.weight)
    ids = torch.tensor([4, 0, 19])
    expected = layer(ids)
    layer.quantize_(Int8Method())
    assert layer.weight is None and list(layer.parameters()) == []
    assert "Int8Rows" in repr(layer)
    torch.testing.assert_close(layer(ids), expected, atol=expected.abs().max().item() / 200, rtol=0)
