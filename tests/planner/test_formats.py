"""Bits per weight of every format, scales included; the GGUF table equals the gguf package's."""

from __future__ import annotations

import pytest
from gguf import GGML_QUANT_SIZES

from corral.errors import ConfigError
from corral.planner.formats import GGUF_TYPES, format_names, kv_row_bytes, weight_format


def test_the_gguf_block_table_equals_the_gguf_package():
    assert {t: (b, s) for t, (_, b, s) in GGUF_TYPES.items()} == {int(t): v for t, v in GGML_QUANT_SIZES.items()}
    assert {name for name, _, _ in GGUF_TYPES.values()} == {t.name for t in GGML_QUANT_SIZES}


@pytest.mark.parametrize("name,bits", [
    ("q4_0", 4.5), ("q4_1", 5.0), ("q8_0", 8.5), ("q4_k", 4.5), ("q5_k", 5.5), ("q6_k", 6.5625), ("q2_k", 2.625),
    ("iq4_xs", 4.25), ("bf16", 16), ("fp32", 32), ("fp8", 8), ("int8", 8),
])
def test_bits_per_weight_include_scales_and_mins(name, bits):
    assert weight_format(name).bits_per_weight == bits


@pytest.mark.parametrize("group,bits", [(32, 5.0), (64, 4.5), (128, 4.25), (256, 4.125)])
def test_int4_carries_an_fp16_scale_and_min_per_group(group, bits):
    fmt = weight_format("int4", group)
    assert fmt.bits_per_weight == bits
    assert fmt.matrix_bytes(3, 256) == 3 * (256 // group) * (group // 2 + 4)


def test_per_row_scales_count_once_per_output_row():
    assert weight_format("int8").matrix_bytes(10, 64) == 10 * (64 + 8)  # corral's Int8DynamicLinear.nbytes


def test_a_row_that_is_not_whole_blocks_is_refused():
    with pytest.raises(ConfigError, match="blocks of 32"):
        weight_format("q4_1").matrix_bytes(4, 48)


def test_bad_names_and_group_sizes_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown --format 'q9'.*q4_k"):
        weight_format("q9")
    with pytest.raises(ConfigError, match="--group-size must be one of 32, 64, 128, 256"):
        weight_format("int4", 48)
    with pytest.raises(ConfigError, match="--group-size applies to --format int4"):
        weight_format("q4_0", 64)
    with pytest.raises(ConfigError, match="unknown --format"):
        weight_format("q8_k")  # an activation type, not a weight format
    assert "i32" not in format_names() and "q4_k_m" not in format_names()


def test_kv_rows():
    assert kv_row_bytes("int8", 64) == 68  # corral's int8 cache: codes then a float32 scale
    assert kv_row_bytes("fp8", 128) == 128 and kv_row_bytes("bf16", 128) == 256 and kv_row_bytes("fp32", 64) == 256
    with pytest.raises(ConfigError, match="--kv-dtype"):
        kv_row_bytes("fp4", 64)
