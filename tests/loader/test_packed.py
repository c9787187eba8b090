"""Packed checkpoints: blocks survive save_hf_dir / open_hf_dir exactly; a config that does not match the
stored tensors, or one this version did not write, is a ModelLoadError naming the problem."""

from __future__ import annotations

import json

import pytest
import torch

from corral.errors import ModelLoadError, QuantizationError
from corral.loader import PackedFormat, open_checkpoint, save_hf_dir, stored_packed_format
from corral.quantization.blockwise import BlockQuantized, quantize_int4, quantize_int8

FORMAT = PackedFormat("rtn-int4", 4, 32)


def packed_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | BlockQuantized]:
    state: dict[str, torch.Tensor | BlockQuantized] = {}
    for name, tensor in weights.items():
        if name == "model.embed_tokens.weight" or name == "lm_head.weight":
            state[name] = quantize_int8(tensor, None)
        elif tensor.dim() == 2:
            state[name] = quantize_int4(tensor, 32)
        else:
            state[name] = tensor
    return state


@pytest.fixture
def packed_dir(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    state = packed_state(random_weights(config))
    save_hf_dir(tmp_path, config, state, FORMAT)
    return tmp_path, state


def edit_config(path, **changes) -> None:
    raw = json.loads((path / "config.json").read_text())
    raw["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(raw))


def test_blocks_round_trip_exactly(packed_dir):
    path, state = packed_dir
    assert stored_packed_format(path) == FORMAT
    _, packed = open_checkpoint(path, keep_quantized=True)
    _, floats = open_checkpoint(path)
    for name, expected in state.items():
        if isinstance(expected, BlockQuantized):
            got = packed[name]
            assert (got.bits, got.group_size) == (expected.bits, expected.group_size)
            assert torch.equal(got.values, expected.values) and torch.equal(got.scales, expected.scales)
            assert torch.equal(floats[name], expected.dequantize())
        else:
            assert torch.equal(packed[name], expected)


@pytest.mark.parametrize("changes,message", [
    ({"bits": 8}, "corrupt quantization_config"),
    ({"method": "int8", "bits": 8, "group_size": None}, "implies 8-bit"),
    ({"group_size": 64}, "groups of 64"),
    ({"quant_method": "awq"}, "not supported"),
    ({"format_version": 2}, "format version"),
    ({"method": "magic"}, "unknown method"),
])
def test_a_mismatched_or_foreign_config_is_refused(packed_dir, changes, message):
    path, _ = packed_dir
    edit_config(path, **changes)
    with pytest.raises(ModelLoadError, match=message):
        _, weights = open_checkpoint(path, keep_quantized=True)
        weights["model.layers.0.self_attn.q_proj.weight"]


def test_packed_tensors_without_a_config_are_refused(packed_dir):
    path, _ = packed_dir
    raw = json.loads((path / "config.json").read_text())
    del raw["quantization_config"]
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="no quantization_config"):
        open_checkpoint(path)


def test_packed_format_rules():
    with pytest.raises(QuantizationError):
        PackedFormat("int8", 4, None)
    with pytest.raises(QuantizationError):
        PackedFormat("awq-int4", 4, None)
    assert PackedFormat.from_json(FORMAT.to_json(), "x") == FORMAT
    with pytest.raises(QuantizationError, match="activation bits"):
        PackedFormat("rtn-int4", 4, 32, activation_bits=4)


def test_activation_bits_are_stored_and_older_directories_read_as_8():
    eight = PackedFormat("awq-int4", 4, 64, activation_bits=8)
    assert PackedFormat.from_json(eight.to_json(), "x") == eight
    assert FORMAT.activation_bits == 16 and FORMAT.to_json()["activation_bits"] == 16
    older = FORMAT.to_json()
    del older["activation_bits"]  # written before the key existed, when every directory ran at 8
    assert PackedFormat.from_json(older, "x").activation_bits == 8
    with pytest.raises(ModelLoadError, match="corrupt quantization_config"):
        PackedFormat.from_json({**FORMAT.to_json(), "activation_bits": 12}, "x")
