"""``quantize_checkpoint``: every method writes a directory that loads packed and generates; round-to-nearest
is stored bit for bit; AWQ and GPTQ beat it on calibration data; bad input leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from corral import LLM, SamplingParams
from corral.compress.quantize import quantize_checkpoint
from corral.compress.tuning import TuningConfig
from corral.config import QUANTIZE_METHODS
from corral.errors import ConfigError, QuantizationError
from corral.loader import load_checkpoint, open_checkpoint
from corral.quantization.blockwise import BlockLinear, BlockQuantized, quantize_int4, quantize_int8

CALIBRATION = {"calibration_tokens": 384, "sequence_length": 128}
TUNING = TuningConfig(steps=4, num_tokens=512, sequence_length=128, sequences_per_step=2)


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    """method -> (directory, report), each written once for the module."""
    root = tmp_path_factory.mktemp("quantized")
    return {
        method: (out, quantize_checkpoint(tiny_model_dir, method, out, group_size=32, tuning=TUNING, **CALIBRATION))
        for method in QUANTIZE_METHODS
        for out in [str(root / method)]
    }


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_written_directory_loads_packed_and_generates(quantized, method):
    out, report = quantized[method]
    assert json.load(open(os.path.join(out, "config.json")))["quantization_config"]["method"] == method
    llm = LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256)
    model = llm.engine.core.runner.model
    assert all(isinstance(layer.packed, BlockLinear) for layer in model.modules() if hasattr(layer, "packed")
               and layer.packed is not None)
    assert isinstance(model.model.embed_tokens.packed, BlockLinear)
    [output] = llm.generate(["def add(a, b):"], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert len(output.outputs[0].token_ids) == 6
    # the same directory dequantized to float computes nearly the same next token distribution
    exact = LLM(model=out, quantization="none", kv_cache_memory=8 * 1024**2, max_model_len=256)
    [again] = exact.generate(["def add(a, b):"], SamplingParams(max_tokens=1, temperature=0))
    assert again.outputs[0].token_ids[0] == output.outputs[0].token_ids[0]
    bits = 8 if method == "int8" else 4
    assert report.packed_format.bits == bits


@pytest.mark.parametrize("method", ["rtn-int4", "int8"])
def test_round_to_nearest_is_stored_bit_for_bit(quantized, tiny_model_dir, method):
    out, _ = quantized[method]
    _, original = load_checkpoint(tiny_model_dir)
    _, stored = open_checkpoint(out, keep_quantized=True)
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.embed_tokens.weight"):
        blocks = stored[name]
        assert isinstance(blocks, BlockQuantized)
        per_row = method == "int8" or "embed" in name
        expected = quantize_int8(original[name], None) if per_row else quantize_int4(original[name], 32)
        assert (blocks.bits, blocks.group_size) == (expected.bits, expected.group_size)
        assert torch.equal(blocks.values, expected.values) and torch.equal(blocks.scales, expected.scales)
    _, dequantized = open_checkpoint(out)  # without keep_quantized: float, as the blocks dequantize
    assert torch.equal(dequantized["model.layers.0.self_attn.k_proj.weight"],
                       stored["model.layers.0.self_attn.k_proj.weight"].dequantize())


@pytest.mark.parametrize("method", ["awq-int4", "gptq-int4"])
def test_calibrated_methods_beat_round_to_nearest(quantized, method):
    _, report = quantized[method]
    assert report.num_calibration_tokens == 384
    assert set(report.output_error) == set(report.rtn_output_error) and len(report.output_error) == 8
    assert report.error_vs_rtn < 0.9, report.error_vs_rtn


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_calibrated_methods_then_tune_their_groups_end_to_end(quantized, method):
    tuning = quantized[method][1].tuning
    if method not in ("awq-int4", "gptq-int4"):
        assert tuning is None
        return
    assert tuning.steps == TUNING.steps
    assert tuning.kl_after < tuning.kl_before, tuning


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_activation_aware_methods_fold_input_scales_into_the_norms(quantized, tiny_model_dir, method):
    _, original = load_checkpoint(tiny_model_dir)
    _, stored = open_checkpoint(quantized[method][0])
    names = [f"model.layers.{i}.{norm}.weight" for i in range(2)
             for norm in ("input_layernorm", "post_attention_layernorm")]
    folded = [not torch.equal(stored[name], original[name]) for name in names]
    assert folded == [method in ("awq-int4", "gptq-int4")] * len(names)


def test_weight_memory_drops(quantized, tiny_model_dir):
    _, float_weights = load_checkpoint(tiny_model_dir)
    float_bytes = sum(t.nbytes for t in float_weights.values())
    assert quantized["int8"][1].weight_bytes < 0.3 * float_bytes
    assert quantized["rtn-int4"][1].weight_bytes < quantized["int8"][1].weight_bytes


def activation_bits_in_use(llm: LLM) -> set[int]:
    model = llm.engine.core.runner.model
    return {m.packed.activation_bits for m in model.modules() if isinstance(getattr(m, "packed", None), BlockLinear)}


def test_directories_run_with_their_activation_bits_unless_overridden(quantized, tiny_model_dir, tmp_path):
    out, report = quantized["awq-int4"]
    assert report.packed_format.activation_bits == 16  # the default: the weights are the only rounding
    assert json.load(open(os.path.join(out, "config.json")))["quantization_config"]["activation_bits"] == 16
    assert activation_bits_in_use(LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256)) == {16}
    fast = LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256, activation_bits=8)
    assert activation_bits_in_use(fast) == {8}
    eight = str(tmp_path / "rtn8")
    quantize_checkpoint(tiny_model_dir, "rtn-int4", eight, group_size=32, activation_bits=8, **CALIBRATION)
    assert activation_bits_in_use(LLM(model=eight, kv_cache_memory=8 * 1024**2, max_model_len=256)) == {8}
    with pytest.raises(ConfigError, match="applies to block-quantized weights"):
        LLM(model=out, quantization="none", activation_bits=16, kv_cache_memory=8 * 1024**2, max_model_len=256)


def test_stored_weights_run_as_stored_or_dequantized_only(quantized):
    out, _ = quantized["rtn-int4"]
    with pytest.raises(ConfigError, match="already quantized"):
        LLM(model=out, quantization="int8", kv_cache_memory=8 * 1024**2, max_model_len=256)


def test_existing_output_is_refused_untouched(tiny_model_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizationError, match="already exists"):
        quantize_checkpoint(tiny_model_dir, "rtn-int4", str(out), group_size=32)
    assert os.listdir(out) == ["keep.txt"]


def test_unsupported_group_size_is_refused_before_any_work(tiny_model_dir, tmp_path):
    with pytest.raises(QuantizationError, match="not a multiple of the group size 128"):
        quantize_checkpoint(tiny_model_dir, "gptq-int4", str(tmp_path / "out"), group_size=128)
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(tiny_model_dir, tmp_path, monkeypatch):
    from corral.text.tokenizer import Tokenizer

    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        quantize_checkpoint(tiny_model_dir, "rtn-int4", str(tmp_path / "out"), group_size=32)
    assert os.listdir(tmp_path) == []
