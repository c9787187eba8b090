"""RMSNorm and rotary kernels against their torch references: rotary bit for bit, RMSNorm within an ulp."""

from __future__ import annotations

import pytest
import torch

from corral.kernels import cpu_extension
from corral.kernels.norm import rms_norm, rms_norm_reference
from corral.kernels.rotary import apply_rotary, apply_rotary_reference

needs_kernels = pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install builds them)")


@needs_kernels
@pytest.mark.parametrize("num_rows, width", [(1, 576), (7, 64), (300, 96)])
def test_rms_norm_matches_torch(num_rows, width):
    generator = torch.Generator().manual_seed(num_rows)
    x = torch.randn(num_rows, width, generator=generator) * 30
    weight = torch.rand(width, generator=generator) + 0.5
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5), rtol=3e-7, atol=1e-7)
    one = rms_norm(x[:1], weight, 1e-5)
    assert torch.equal(one, rms_norm(x, weight, 1e-5)[:1])  # a row's result does not depend on the batch


@needs_kernels
@pytest.mark.parametrize("num_tokens", [1, 5, 130])
def test_rotary_is_bit_identical_on_a_strided_view(num_tokens):
    generator = torch.Generator().manual_seed(num_tokens)
    num_heads, head_size = 4, 64
    qkv = torch.randn(num_tokens, (num_heads + 2) * head_size, generator=generator)
    x = qkv[:, : num_heads * head_size].view(num_tokens, num_heads, head_size)  # strided rows, as in the model
    angles = torch.rand(num_tokens, 1, head_size, generator=generator) * 6
    cos, sin = angles.cos(), angles.sin()
    assert torch.equal(apply_rotary(x, cos, sin), apply_rotary_reference(x, cos, sin))


def test_fallbacks_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setattr(cpu_extension, "load", lambda: None)
    x, weight = torch.randn(3, 16), torch.rand(16)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm_reference(x, weight, 1e-6))
    q, cos, sin = torch.randn(2, 3, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    assert torch.equal(apply_rotary(q, cos, sin), apply_rotary_reference(q, cos, sin))
