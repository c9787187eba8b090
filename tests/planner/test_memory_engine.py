"""The planner's memory arithmetic against what corral's engine allocates and reports for the same settings:
KV bytes per block, blocks for a budget (and its log line), sequences the block manager admits, and the
bytes of the weights the loader and quantization methods hold."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.config import CacheConfig
from corral.engine.block_manager import KVCacheManager
from corral.engine.kv_cache import allocate_kv_caches, bytes_per_block, num_blocks_for_budget
from corral.engine.request import Request
from corral.errors import ConfigError
from corral.loader import open_checkpoint
from corral.loader.names import expected_shapes
from corral.loader.safetensors import hf_config_dict
from corral.models.loading import load_model
from corral.models.spec import ModelConfig
from corral.planner.formats import (
    CORRAL_DEQUANTIZABLE_GGUF_TYPES,
    CORRAL_GGUF_LAYOUTS,
    FILE_FORMAT,
    weight_format,
)
from corral.planner.hardware import hardware
from corral.planner.memory import KVBudget, Parallelism, kv_bytes_per_token, plan_memory, weight_bytes
from corral.planner.model_files import default_model_path, read_gguf_shape, read_hf_config
from corral.planner.models import ModelShape
from corral.quantization.blockwise import BlockMethod
from corral.quantization.int8 import Int8Method, fbgemm_available
from corral.runtime import resolve_quantization
from corral.sample.params import SamplingParams

CPU = torch.device("cpu")
ZEN3 = hardware("cpu-zen3-2vcpu")
SMOL = ModelConfig(
    architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
)
# GQA 4:1 with a head_dim that is not hidden / heads, multi-head (no GQA), and a Qwen2-like biased model
CONFIGS = [
    SMOL,
    replace(SMOL, num_attention_heads=8, num_key_value_heads=2, head_dim=96, num_hidden_layers=5),
    replace(SMOL, num_attention_heads=4, num_key_value_heads=4, hidden_size=256, num_hidden_layers=3),
    replace(SMOL, architecture="qwen2", attention_bias=True, num_key_value_heads=1, num_hidden_layers=2),
]
ENGINE_KV = {"fp32": (torch.float32, "model"), "bf16": (torch.bfloat16, "model"), "int8": (torch.float32, "int8")}


def shape_of(config: ModelConfig) -> ModelShape:
    return ModelShape(
        name="test", vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings, head_dim=config.head_dim,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=config.attention_bias,
    )


def planned_blocks(config: ModelConfig, kv_dtype: str, budget: int, block_size: int, context: int = 64):
    shape = shape_of(config)
    weights = weight_bytes(shape, FILE_FORMAT if shape.file_tensors else weight_format("fp32"), 4, ZEN3)
    return plan_memory(shape, weights, kv_dtype, ZEN3, Parallelism(), context, KVBudget(budget), block_size, 0)


@pytest.mark.parametrize("config", CONFIGS, ids=["smollm2", "gqa-head96", "mha", "qwen2-bias"])
@pytest.mark.parametrize("kv_dtype", list(ENGINE_KV))
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_kv_bytes_per_block_equal_the_engines(config, kv_dtype, block_size):
    dtype, engine_kv = ENGINE_KV[kv_dtype]
    planned = kv_bytes_per_token(shape_of(config), kv_dtype) * block_size
    assert planned == bytes_per_block(config, block_size, dtype, engine_kv)


def test_default_model_kv_bytes_per_token():
    shape = read_gguf_shape(default_model_path())
    assert kv_bytes_per_token(shape, "int8") == 2 * 30 * 3 * (64 + 4) == 12_240
    assert kv_bytes_per_token(shape, "fp32") == 2 * 30 * 3 * 64 * 4 == 46_080


@settings(max_examples=60, deadline=None)
@example(budget=1 << 20, config=SMOL, kv_dtype="fp32", block_size=32)  # not one block: the engine refuses
@given(budget=st.integers(1 << 20, 1 << 31), config=st.sampled_from(CONFIGS), kv_dtype=st.sampled_from(list(ENGINE_KV)),
       block_size=st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_blocks_for_a_budget_equal_the_engines_count(budget, config, kv_dtype, block_size):
    dtype, engine_kv = ENGINE_KV[kv_dtype]
    cache = CacheConfig(block_size=block_size, kv_cache_memory=budget, kv_cache_dtype=engine_kv)
    planned = planned_blocks(config, kv_dtype, budget, block_size).num_blocks
    if planned == 0:  # the engine refuses a pool that holds no block; the planner reports 0 and says why
        with pytest.raises(ConfigError, match="holds no block"):
            num_blocks_for_budget(cache, config, dtype, CPU)
    else:
        assert planned == num_blocks_for_budget(cache, config, dtype, CPU)


def test_blocks_and_mib_equal_what_the_engine_logs(caplog):
    memory = planned_blocks(SMOL, "int8", 64 * 1024**2, 4)
    with caplog.at_level(logging.INFO, logger="corral.engine.kv_cache"):
        allocate_kv_caches(memory.num_blocks, 4, SMOL, torch.float32, CPU, "int8")
    logged = re.search(r"KV cache \(int8\): (\d+) blocks x 4 tokens = (\d+) tokens \(([\d.]+) MiB\)", caplog.text)
    assert logged is not None, caplog.text
    assert int(logged[1]) == memory.num_blocks == 1370  # 64 MiB // 48,960 bytes
    assert int(logged[2]) == memory.num_kv_tokens
    assert logged[3] == f"{memory.num_blocks * memory.block_bytes / 2**20:.1f}"


def admitted_sequences(num_blocks: int, block_size: int, num_tokens: int) -> int:
    """How many requests of ``num_tokens`` distinct tokens the block manager admits at once."""
    manager = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
    count = 0
    while True:
        tokens = list(range(count * num_tokens, (count + 1) * num_tokens))
        request = Request(str(count), tokens, SamplingParams(max_tokens=1), max_model_len=num_tokens + 1)
        if not manager.allocate_slots(request, num_tokens):
            return count
        count += 1


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(1 << 20, 64 << 20), block_size=st.sampled_from([1, 4, 16]),
       context=st.integers(2, 3000), kv_dtype=st.sampled_from(["int8", "fp32"]))
def test_max_sequences_equal_what_the_block_manager_admits(budget, block_size, context, kv_dtype):
    memory = planned_blocks(SMOL, kv_dtype, budget, block_size, context)
    assert memory.max_seqs_at_context == admitted_sequences(memory.num_blocks, block_size, context)


def test_a_context_that_is_not_a_whole_number_of_blocks_rounds_up():
    # 1370 blocks of 4 = 5480 tokens hold 6 x 913 tokens, but 913 tokens take 229 blocks: only 5 fit
    memory = planned_blocks(SMOL, "int8", 64 * 1024**2, 4, context=913)
    assert memory.max_seqs_at_context == admitted_sequences(1370, 4, 913) == 5


def engine_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and packed weight the built model holds (a shared one once)."""
    params = sum(p.nbytes for p in model.parameters())
    packed = {id(p): p for m in model.modules() if (p := getattr(m, "packed", None)) is not None}
    return params + sum(p.nbytes() for p in packed.values())


def test_default_model_weights_equal_what_the_engine_holds(default_model):
    method = resolve_quantization("gguf", CPU, torch.float32, default_model)
    config, weights = open_checkpoint(default_model, torch.float32, keep_quantized=True)
    engine = engine_weight_bytes(load_model(config, weights, torch.float32, CPU, method))
    planned = weight_bytes(read_gguf_shape(default_model), FILE_FORMAT, 4, ZEN3)
    assert planned.total == engine == 96_576_768
    # Q4_1 linears at 20 bytes per 32 weights, the tied Q8_0 table at 34, the norms in float32
    assert planned.by_role == {"linear": 66_355_200, "embedding": 30_081_024, "norm": 140_544}


def random_weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in expected_shapes(config).items()}


TINY = ModelConfig(architecture="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
TINY_CONFIGS = {
    "tied": TINY,
    "untied": replace(TINY, tie_word_embeddings=False),
    "qwen2-bias": replace(TINY, architecture="qwen2", attention_bias=True, tie_word_embeddings=False),
}


def engine_method(name: str, group_size: int):
    if name == "int8":
        if not fbgemm_available():
            pytest.skip("int8 needs fbgemm")
        return Int8Method()
    return None if name == "fp32" else BlockMethod("int4", linear_bits=4, group_size=group_size)


@pytest.mark.parametrize("variant", list(TINY_CONFIGS))
@pytest.mark.parametrize("fmt,group_size", [("fp32", None), ("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)])
def test_weights_equal_what_the_engine_holds(variant, fmt, group_size, tmp_path):
    config = TINY_CONFIGS[variant]
    method = engine_method(fmt, group_size or 32)
    model = load_model(config, random_weights(config), torch.float32, CPU, method, calibration_ids=list(range(64)))
    # the planner reads the same model's config.json, as written for an HF directory
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(config)))
    shape = read_hf_config(str(tmp_path / "config.json"))
    planned = weight_bytes(shape, weight_format(fmt, group_size), 4, ZEN3)
    assert planned.total == engine_weight_bytes(model)


@pytest.mark.parametrize("variant", list(TINY_CONFIGS))
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "F16", "BF16"])
def test_gguf_files_weigh_what_the_engine_holds(variant, qtype, tmp_path):
    # Q4_0 is held with its implied min (Q4_1's 20 bytes a block); F16 and BF16 matrices are repacked as Q8_0
    from gguf import GGMLQuantizationType

    from corral.loader.gguf_writer import write_tiny_gguf

    config = TINY_CONFIGS[variant]
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path, config, random_weights(config), GGMLQuantizationType[qtype])
    method = resolve_quantization("gguf", CPU, torch.float32, path)
    loaded_config, weights = open_checkpoint(path, torch.float32, keep_quantized=True)
    engine = engine_weight_bytes(load_model(loaded_config, weights, torch.float32, CPU, method))
    planned = weight_bytes(read_gguf_shape(path), FILE_FORMAT, 4, ZEN3)
    assert planned.total == engine
    assert (planned.repacked_as_q8_0 > 0) == (qtype in ("F16", "BF16"))


def test_the_planners_gguf_type_lists_are_the_loaders():
    from corral.loader.gguf import _BLOCK_LAYOUTS, DEQUANTIZABLE_TYPES

    assert CORRAL_DEQUANTIZABLE_GGUF_TYPES == {t.name for t in DEQUANTIZABLE_TYPES}
    assert set(CORRAL_GGUF_LAYOUTS) == {t.name for t in _BLOCK_LAYOUTS}
