"""The ``isa`` fixture: a test that takes it runs once per set of paged-attention loops this CPU can run
("vector" everywhere, "avx512" where the CPU has it), which also picks the int8 KV writer's loops.
test_block_linear.py overrides it with the block-linear switch."""

from __future__ import annotations

import pytest

from corral.kernels import cpu_extension

PAGED_ISAS = cpu_extension.load().supported_paged_attention_isas() if cpu_extension.load() is not None else []


@pytest.fixture(params=PAGED_ISAS)
def isa(request):
    extension = cpu_extension.load()
    widest = extension.paged_attention_isa()
    extension.set_paged_attention_isa(request.param)
    yield request.param
    extension.set_paged_attention_isa(widest)
