"""The KV pool's size and layout: float rows of head_size, or int8 rows of head_size codes + a float32 scale."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from corral.config import CacheConfig
from corral.engine.kv_cache import allocate_kv_caches, bytes_per_block, num_blocks_for_budget
from corral.errors import ConfigError
from corral.models.spec import ModelConfig

CONFIG = ModelConfig(
    architecture="llama", vocab_size=256, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
)


def test_int8_rows_take_head_size_plus_four_bytes():
    fp32 = bytes_per_block(CONFIG, 8, torch.float32)
    assert fp32 == 2 * 3 * 64 * 4 * 8 * 30
    int8 = bytes_per_block(CONFIG, 8, torch.float32, "int8")
    assert int8 == 2 * 3 * (64 + 4) * 8 * 30
    assert bytes_per_block(CONFIG, 8, torch.float16) / int8 > 1.88  # vs fp16: nearly twice the tokens
    budget = CacheConfig(block_size=8, kv_cache_memory=64 * 1024**2)
    int8_budget = CacheConfig(block_size=8, kv_cache_memory=64 * 1024**2, kv_cache_dtype="int8")
    cpu = torch.device("cpu")
    assert num_blocks_for_budget(int8_budget, CONFIG, torch.float32, cpu) == (64 * 1024**2) // int8
    assert num_blocks_for_budget(budget, CONFIG, torch.float32, cpu) == (64 * 1024**2) // fp32


def test_allocated_caches_have_the_row_layout():
    caches = allocate_kv_caches(5, 8, CONFIG, torch.float32, torch.device("cpu"), "int8")
    assert len(caches) == 30
    assert caches[0].shape == (2, 40, 3, 68) and caches[0].dtype == torch.int8 and not caches[0].any()
    (fp32,) = allocate_kv_caches(5, 8, replace(CONFIG, num_hidden_layers=1), torch.float32, torch.device("cpu"))
    assert fp32.shape == (2, 40, 3, 64) and fp32.dtype == torch.float32


def test_unknown_kv_cache_dtype_is_refused():
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype="fp8")
