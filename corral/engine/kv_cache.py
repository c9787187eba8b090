"""The paged KV pool: one preallocated tensor per layer, sized from a memory budget, in the model's dtype
or int8 (``kernels/kv_int8.py``: ``head_size`` codes and a float32 scale per token and KV head)."""

from __future__ import annotations

import logging
import math
import mmap

import torch

from corral.config import CacheConfig
from corral.errors import ConfigError
from corral.kernels import kv_int8
from corral.models.spec import ModelConfig
from corral.platform import available_cpu_memory

logger = logging.getLogger(__name__)


def bytes_per_block(
    model_config: ModelConfig, block_size: int, dtype: torch.dtype, kv_cache_dtype: str = "model"
) -> int:
    """K and V of ``block_size`` tokens across all layers."""
    row, row_dtype = kv_int8.row_layout(model_config.head_size, dtype, kv_cache_dtype)
    per_token = 2 * model_config.num_key_value_heads * row * row_dtype.itemsize
    return per_token * block_size * model_config.num_hidden_layers


def num_blocks_for_budget(
    cache_config: CacheConfig, model_config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> int:
    if cache_config.num_gpu_blocks_override is not None:
        return cache_config.num_gpu_blocks_override
    budget = cache_config.kv_cache_memory
    if isinstance(budget, float):
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
        else:
            free = available_cpu_memory()
        budget = int(free * budget)
    num_blocks = budget // bytes_per_block(model_config, cache_config.block_size, dtype, cache_config.kv_cache_dtype)
    if num_blocks < 1:
        raise ConfigError(f"kv_cache_memory of {budget} bytes holds no block of {cache_config.block_size} tokens")
    return num_blocks


def allocate_kv_caches(
    num_blocks: int,
    block_size: int,
    model_config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    kv_cache_dtype: str = "model",
) -> list[torch.Tensor]:
    """One ``[2, num_blocks * block_size, num_kv_heads, row]`` tensor per layer (K then V); ``row`` is
    ``head_size``, or ``head_size + 4`` bytes in an int8 cache."""
    row, row_dtype = kv_int8.row_layout(model_config.head_size, dtype, kv_cache_dtype)
    shape = (2, num_blocks * block_size, model_config.num_key_value_heads, row)
    if device.type == "cpu":
        caches = [_lazily_zeroed(shape, row_dtype) for _ in range(model_config.num_hidden_layers)]
    else:
        caches = [torch.zeros(shape, dtype=row_dtype, device=device) for _ in range(model_config.num_hidden_layers)]
    total = num_blocks * bytes_per_block(model_config, block_size, dtype, kv_cache_dtype)
    logger.info(
        "KV cache (%s): %d blocks x %d tokens = %d tokens (%.1f MiB)",
        "int8" if kv_cache_dtype == "int8" else str(dtype).removeprefix("torch."),
        num_blocks, block_size, num_blocks * block_size, total / 2**20,
    )
    return caches


def _lazily_zeroed(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor on fresh anonymous memory: the OS commits a page only when a block is first written,
    so the process's memory grows with the tokens actually cached, not with the pool's size."""
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = mmap.mmap(-1, nbytes)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).view(shape)
