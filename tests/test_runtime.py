"""What ``auto`` resolves to: the fastest weights path the machine has, int8 K/V beside quantized weights, and
bf16 copies of packed linears for batches where the CPU has AMX."""

from __future__ import annotations

import pytest
import torch

from corral import runtime
from corral.errors import ConfigError
from corral.kernels import cpu_extension
from corral.quantization.blockwise import BlockMethod
from corral.quantization.int8 import Int8Method, fbgemm_available
from corral.runtime import (
    resolve_batched_linears,
    resolve_kv_cache_dtype,
    resolve_prefill_attention,
    resolve_quantization,
)

CPU = torch.device("cpu")


@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built (make install)")
@pytest.mark.parametrize("model", [None, "/models/Model.Q4_1.GGUF"])
def test_auto_keeps_a_gguf_files_blocks(model):
    method = resolve_quantization("auto", CPU, torch.float32, model)
    assert isinstance(method, BlockMethod) and method.keeps_stored_blocks


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm not available")
def test_auto_quantizes_other_checkpoints_to_int8():
    assert isinstance(resolve_quantization("auto", CPU, torch.float32, "/models/hf_dir"), Int8Method)


def test_auto_is_exact_off_the_cpu_float32_path():
    assert resolve_quantization("auto", CPU, torch.bfloat16) is None
    with pytest.raises(ConfigError, match="runs on the CPU with dtype float32"):
        resolve_quantization("gguf", CPU, torch.bfloat16)
    with pytest.raises(ConfigError, match="unsupported quantization"):
        resolve_quantization("fp4", CPU, torch.float32)


def test_activation_bits_apply_to_block_quantized_weights_only():
    assert resolve_quantization("gguf", CPU, torch.float32).activation_bits == 8  # llama.cpp's rounding
    assert resolve_quantization("int4", CPU, torch.float32, activation_bits=16).activation_bits == 16
    with pytest.raises(ConfigError, match="applies to block-quantized weights"):
        resolve_quantization("none", CPU, torch.float32, activation_bits=16)
    with pytest.raises(ConfigError, match="unsupported activation_bits"):
        resolve_quantization("gguf", CPU, torch.float32, activation_bits=12)


def test_kv_cache_dtype_auto_follows_the_weights():
    assert resolve_kv_cache_dtype("auto", BlockMethod("gguf", 8)) == "int8"
    assert resolve_kv_cache_dtype("auto", None) == "model"
    assert resolve_kv_cache_dtype("model", BlockMethod("gguf", 8)) == "model"
    assert resolve_kv_cache_dtype("int8", None) == "int8"
    with pytest.raises(ConfigError, match="unsupported kv_cache_dtype"):
        resolve_kv_cache_dtype("fp8", None)


def test_batch_invariant_warns_where_the_linears_depend_on_the_batch(tiny_model_dir, caplog):
    """Per-token attention alone does not make float linears row-independent: the mode says so at start-up."""
    from corral import LLM

    with caplog.at_level("WARNING", logger="corral.runtime"):
        LLM(tiny_model_dir, quantization="none", max_model_len=64, batch_invariant=True)
    assert "outputs can still change with batching" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="corral.runtime"):
        LLM(tiny_model_dir, quantization="none", max_model_len=64)
        if fbgemm_available():  # integer GEMM: rows are independent
            LLM(tiny_model_dir, quantization="int8", max_model_len=64, batch_invariant=True)
    assert "batch_invariant" not in caplog.text


@pytest.mark.parametrize("has_amx", [True, False])
def test_batched_linears_auto_copies_packed_weights_where_the_cpu_has_amx(monkeypatch, has_amx):
    monkeypatch.setattr(runtime, "has_amx_bf16", lambda: has_amx)
    blocks = BlockMethod("gguf", 4, keeps_stored_blocks=True)
    assert resolve_batched_linears("auto", blocks, CPU, batch_invariant=False) == ("bf16" if has_amx else "packed")
    assert resolve_batched_linears("auto", blocks, CPU, batch_invariant=True) == "packed"
    assert resolve_batched_linears("auto", None, CPU, batch_invariant=False) == "packed"  # nothing packed to copy
    assert resolve_batched_linears("bf16", blocks, CPU, batch_invariant=False) == "bf16"  # asked for: any CPU
    assert resolve_batched_linears("packed", blocks, CPU, batch_invariant=False) == "packed"


def test_batched_linears_bf16_is_refused_where_it_cannot_hold():
    blocks = BlockMethod("gguf", 4, keeps_stored_blocks=True)
    with pytest.raises(ConfigError, match="unsupported batched_linears 'fp8'"):
        resolve_batched_linears("fp8", blocks, CPU, batch_invariant=False)
    with pytest.raises(ConfigError, match="block-quantized weights"):
        resolve_batched_linears("bf16", None, CPU, batch_invariant=False)
    with pytest.raises(ConfigError, match="batch_invariant"):
        resolve_batched_linears("bf16", blocks, CPU, batch_invariant=True)


@pytest.mark.parametrize("has_amx", [True, False])
def test_prefill_attention_auto_is_bf16_for_float32_models_where_the_cpu_has_amx(monkeypatch, has_amx):
    monkeypatch.setattr(runtime, "has_amx_bf16", lambda: has_amx)
    blocks = BlockMethod("gguf", 4, keeps_stored_blocks=True)
    assert resolve_prefill_attention("auto", torch.float32, CPU, blocks) == (torch.bfloat16 if has_amx else None)
    assert resolve_prefill_attention("auto", torch.float32, CPU, None) is None  # the exact path stays exact
    assert resolve_prefill_attention("auto", torch.bfloat16, CPU, blocks) is None  # already the model's dtype
    assert resolve_prefill_attention("model", torch.float32, CPU) is None
    assert resolve_prefill_attention("bfloat16", torch.float32, CPU) == torch.bfloat16
    assert resolve_prefill_attention("auto", torch.float32, CPU, blocks, batch_invariant=True) is None
    with pytest.raises(ConfigError, match="batch_invariant never runs"):
        resolve_prefill_attention("bfloat16", torch.float32, CPU, blocks, batch_invariant=True)
    with pytest.raises(ConfigError, match="unsupported prefill_attention 'fp8'"):
        resolve_prefill_attention("fp8", torch.float32, CPU)
