"""Memory: weight bytes, KV bytes per token, and how many KV blocks and sequences fit.

KV bytes per token = 2 (K and V) x layers x KV heads x row bytes, where a row is ``head_size`` elements
(``head_size + 4`` bytes in corral's int8 cache); this is ``corral.engine.kv_cache.bytes_per_block`` divided
by the block size. Blocks = KV budget // (block_size x KV bytes per token), as the engine counts them. The
budget is either given in bytes (the engine's ``kv_cache_memory``), or vLLM's rule: memory x utilization -
weights - activation peak - overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.errors import ConfigError
from corral.planner.formats import (
    CORRAL_GGUF_LAYOUTS,
    FILE_FORMAT,
    GGUF_TYPES,
    WeightFormat,
    gguf_type_format,
    kv_row_bytes,
    weight_format,
)
from corral.planner.hardware import GiB, Hardware
from corral.planner.models import ModelShape, TensorSpec

_Q8_0 = "Q8_0"
# A Python process that has imported corral.runtime (torch 2.13 CPU): 353 MiB RSS before any model
# (measured 2026-12-06 on this project's machine). GPU: the CUDA context, CUDA graphs and NCCL buffers,
# which vLLM's start-up log reports as non-torch and graph memory, typically 1-2 GiB together.
DEFAULT_OVERHEAD_BYTES = {"cpu": 353 * 2**20, "gpu": int(1.5 * GiB)}
DEFAULT_MEMORY_UTILIZATION = 0.9  # vLLM's gpu_memory_utilization default


@dataclass(frozen=True)
class Parallelism:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1

    @property
    def num_devices(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def check(self, model: ModelShape, hw: Hardware) -> None:
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        if tp < 1 or pp < 1:
            raise ConfigError("--tp and --pp must be at least 1")
        if hw.kind == "cpu" and self.num_devices > 1:
            raise ConfigError(f"--tp/--pp above 1 need GPUs; --hardware {hw.name} is one CPU VM (use --replicas)")
        if model.num_attention_heads % tp:
            raise ConfigError(f"--tp {tp} does not divide the {model.num_attention_heads} attention heads")
        kv = model.num_key_value_heads
        if kv % tp and tp % kv:
            raise ConfigError(f"--tp {tp} neither divides nor is a multiple of the {kv} KV heads")
        if pp > model.num_hidden_layers:
            raise ConfigError(f"--pp {pp} exceeds the {model.num_hidden_layers} layers")


@dataclass(frozen=True)
class WeightBytes:
    total: int  # every device together
    per_device: int  # the largest share one device holds
    by_role: dict[str, int]
    repacked_as_q8_0: int = 0  # GGUF matrices corral's CPU engine holds as Q8_0 instead of their own type


def tensor_bytes(tensor: TensorSpec, fmt: WeightFormat, float_bytes: int, tied: bool, cpu_engine: bool) -> tuple[int, bool]:
    """Bytes of one tensor, and whether corral's CPU engine repacks it as Q8_0. Under the "file" format a
    GGUF tensor keeps its stored type, except on a CPU, where corral's engine holds it in the layout of
    formats.CORRAL_GGUF_LAYOUTS (Q8_0 for the types it does not keep). 1-D tensors (norms, biases) and MoE
    routers are held in the activation dtype."""
    if len(tensor.shape) == 1 or tensor.role == "router":
        return tensor.numel * float_bytes, False
    rows, cols = math.prod(tensor.shape[:-1]), tensor.shape[-1]
    if fmt.name == FILE_FORMAT.name:
        if tensor.gguf_type is None:
            raise ConfigError("--format file needs a GGUF model file")
        if not cpu_engine:
            return gguf_type_format(tensor.gguf_type).matrix_bytes(rows, cols), False
        stored = GGUF_TYPES[tensor.gguf_type][0]
        held = CORRAL_GGUF_LAYOUTS.get(stored, _Q8_0)
        return weight_format(held).matrix_bytes(rows, cols), stored not in CORRAL_GGUF_LAYOUTS
    if tensor.role == "embedding":
        return fmt.embedding_format(tied).matrix_bytes(rows, cols), False
    if tensor.role == "lm_head":
        return fmt.lm_head_format().matrix_bytes(rows, cols), False
    return fmt.matrix_bytes(rows, cols), False


def weight_bytes(model: ModelShape, fmt: WeightFormat, float_bytes: int, hw: Hardware,
                 parallel: Parallelism = Parallelism()) -> WeightBytes:
    """What the engine holds for ``model`` in ``fmt`` (see ``tensor_bytes``); a tied LM head that the
    format packs apart from the table adds one ``vocab x hidden`` matrix."""
    by_role: dict[str, int] = {}
    per_layer = [0] * model.num_hidden_layers
    repacked = 0
    for tensor in model.tensors():
        nbytes, was_repacked = tensor_bytes(tensor, fmt, float_bytes, model.tie_word_embeddings, hw.kind == "cpu")
        repacked += nbytes if was_repacked else 0
        by_role[tensor.role] = by_role.get(tensor.role, 0) + nbytes
        if tensor.layer is not None:
            per_layer[tensor.layer] += nbytes
    if model.tie_word_embeddings and fmt.tied_head_separate:
        by_role["lm_head"] = fmt.lm_head_format().matrix_bytes(model.vocab_size, model.hidden_size)
    total = sum(by_role.values())
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    # each pipeline stage holds its layers; the first also the embedding, the last the head and final norm
    per_stage = math.ceil(model.num_hidden_layers / pp)
    largest_stage = max(sum(per_layer[i:i + per_stage]) for i in range(0, model.num_hidden_layers, per_stage))
    outside = total - sum(per_layer)
    if pp > 1:
        outside = max(by_role.get("embedding", 0), outside - by_role.get("embedding", 0))
    return WeightBytes(total, (largest_stage + outside) // tp, by_role, repacked)


def kv_bytes_per_token(model: ModelShape, kv_dtype: str, parallel: Parallelism = Parallelism()) -> int:
    """K and V of one token on one device: its pipeline stage's layers and its share of the KV heads
    (a KV head is replicated when there are more tensor-parallel ranks than KV heads)."""
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    heads = max(1, model.num_key_value_heads // tp)
    layers = math.ceil(model.num_hidden_layers / pp)
    return 2 * layers * heads * kv_row_bytes(kv_dtype, model.head_size)


def activation_peak_bytes(model: ModelShape, num_batched_tokens: int, num_seqs: int, float_bytes: int,
                          tp: int = 1) -> int:
    """An estimate of the forward pass's peak working set (vLLM measures it with a profiling run): one
    layer's widest tensors for a full token budget (residual, normed input, q/k/v, attention output,
    gate/up, activation) plus float32 logits and probabilities for ``num_seqs`` rows."""
    q_kv = (model.num_attention_heads + 2 * model.num_key_value_heads) * model.head_size // tp
    per_token = 3 * model.hidden_size + q_kv + model.num_attention_heads * model.head_size // tp
    per_token += 3 * model.intermediate_size // tp
    return num_batched_tokens * per_token * float_bytes + 2 * num_seqs * model.vocab_size * 4


@dataclass(frozen=True)
class KVBudget:
    """Bytes for the KV pool per device: ``kv_cache_memory`` when set (the engine's rule), else vLLM's."""

    kv_cache_memory: int | None = None
    memory_utilization: float = DEFAULT_MEMORY_UTILIZATION
    overhead_bytes: int | None = None  # None: DEFAULT_OVERHEAD_BYTES for the hardware's kind

    def __post_init__(self) -> None:
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ConfigError("--kv-cache-memory must be a positive number of bytes")
        if not 0 < self.memory_utilization <= 1:
            raise ConfigError(f"--memory-utilization must be in (0, 1], got {self.memory_utilization}")
        if self.overhead_bytes is not None and self.overhead_bytes < 0:
            raise ConfigError("--overhead-bytes must not be negative")


@dataclass(frozen=True)
class MemoryPlan:
    weight: WeightBytes
    kv_dtype: str
    kv_bytes_per_token: int  # per device
    block_size: int
    block_bytes: int
    usable_bytes: int  # memory x utilization, per device
    activation_peak_bytes: int
    overhead_bytes: int
    kv_budget_bytes: int
    num_blocks: int
    context_len: int

    @property
    def num_kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_per_seq(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def max_seqs(self, num_tokens: int) -> int:
        """Sequences of ``num_tokens`` tokens whose blocks all fit at once."""
        return self.num_blocks // self.blocks_per_seq(num_tokens)

    @property
    def max_seqs_at_context(self) -> int:
        return self.max_seqs(self.context_len)

    @property
    def vllm_max_concurrency(self) -> float:
        """vLLM's start-up line "Maximum concurrency for N tokens per request": KV tokens / N."""
        return self.num_kv_tokens / self.context_len


def plan_memory(model: ModelShape, weight: WeightBytes, kv_dtype: str, hw: Hardware, parallel: Parallelism,
                context_len: int, budget: KVBudget, block_size: int, activation_peak: int) -> MemoryPlan:
    if block_size < 1 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two, got {block_size}")
    per_token = kv_bytes_per_token(model, kv_dtype, parallel)
    block_bytes = per_token * block_size
    usable = int(hw.memory_bytes * budget.memory_utilization)
    overhead = DEFAULT_OVERHEAD_BYTES[hw.kind] if budget.overhead_bytes is None else budget.overhead_bytes
    if budget.kv_cache_memory is not None:
        kv_budget = budget.kv_cache_memory
    else:
        kv_budget = max(0, usable - weight.per_device - activation_peak - overhead)
    return MemoryPlan(weight, kv_dtype, per_token, block_size, block_bytes, usable, activation_peak, overhead,
                      kv_budget, kv_budget // block_bytes, context_len)
