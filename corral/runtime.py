"""The one place that wires concrete parts together: checkpoint, tokenizer, model, KV pool,
attention backend, runner, scheduler."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from corral.config import (
    ACTIVATION_BITS,
    BATCHED_LINEARS,
    DENSE_MIN_ROWS,
    DENSE_MIN_ROWS_WIDE,
    KV_CACHE_DTYPES,
    PREFILL_ATTENTION,
    QUANTIZATIONS,
    WIDE_LINEAR,
    CacheConfig,
    SchedulerConfig,
    SpeculativeConfig,
)
from corral.engine.block_manager import KVCacheManager
from corral.engine.core import EngineCore
from corral.engine.kv_cache import allocate_kv_caches, num_blocks_for_budget
from corral.engine.llm_engine import LLMEngine
from corral.engine.model_runner import ModelRunner
from corral.engine.proposer import Proposer
from corral.engine.scheduler import Scheduler
from corral.engine.spec_policy import SpeculationPolicy
from corral.errors import ConfigError
from corral.kernels import cpu_extension
from corral.layers.attention.torch_paged import TorchPagedAttention
from corral.loader import PackedFormat, open_checkpoint, stored_packed_format
from corral.loader.tokenizer import load_tokenizer
from corral.models.loading import first_layers, load_model
from corral.models.spec import ModelConfig
from corral.platform import has_amx_bf16, release_free_memory
from corral.quantization.base import QuantMethod
from corral.quantization.blockwise import BlockMethod, keep_dense_copies_, set_activation_bits_
from corral.quantization.corpus import stdlib_docstrings
from corral.quantization.int8 import Int8Method, fbgemm_available
from corral.spec_decode.draft_head import draft_head_proposer
from corral.spec_decode.draft_model import DraftModelProposer, relative_step_cost
from corral.spec_decode.ngram import NgramProposer
from corral.structured.llguidance_backend import llguidance_grammars
from corral.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_DEFAULT_MAX_MODEL_LEN = 4096
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineArgs:
    """Everything needed to build an engine, flat and named as vLLM's engine arguments."""

    model: str | None = None  # None: the default model (SmolLM2-135M-Instruct, GGUF Q4_1)
    tokenizer: str | None = None  # None: the model's own
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    # one of config.QUANTIZATIONS; none is the exact float path the parity tests use
    quantization: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's context, capped at 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_chunked_prefill: bool = True
    block_size: int = 4
    kv_cache_memory: int | float = 512 * 1024**2
    # one of config.KV_CACHE_DTYPES; int8: codes + a float32 scale per token and KV head (3.76x the tokens of fp32)
    kv_cache_dtype: str = "auto"
    # Block-quantized weights (gguf, int4, corral quantize directories): 8 or 16-bit rounding of each linear's
    # input (config.ACTIVATION_BITS); None: the directory's own (16 unless written with 8), else 8.
    activation_bits: int | None = None
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: int | None = None
    # Every token's attention through one per-token kernel, so greedy output does not depend on batching,
    # chunking or preemption (with the quantized paths, whose rows are independent); slower prefill on long prompts.
    batch_invariant: bool = False
    # Block-quantized linears on big batches (config.BATCHED_LINEARS): auto: a bf16 copy of their weights for
    # inputs of DENSE_MIN_ROWS rows or more where the CPU has AMX, unless batch_invariant; packed: never.
    batched_linears: str = "auto"
    # Prefill attention's dtype (config.PREFILL_ATTENTION): auto: bfloat16 where the CPU has AMX, beside
    # block-quantized float32 weights, else the model's.
    prefill_attention: str = "auto"
    # Speculative decoding, as a dict of SpeculativeConfig fields (vLLM's argument) or the config itself.
    speculative_config: dict[str, Any] | SpeculativeConfig | None = None

    def speculative(self) -> SpeculativeConfig | None:
        spec = self.speculative_config
        if spec is None or isinstance(spec, SpeculativeConfig):
            return spec
        if not isinstance(spec, dict):
            raise ConfigError(f"speculative_config must be a dict or SpeculativeConfig, got {type(spec).__name__}")
        return SpeculativeConfig.from_dict(spec)

    def cache_config(self, kv_cache_dtype: str = "model") -> CacheConfig:
        return CacheConfig(
            block_size=self.block_size,
            kv_cache_memory=self.kv_cache_memory,
            enable_prefix_caching=self.enable_prefix_caching,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            kv_cache_dtype=kv_cache_dtype,
        )

    def scheduler_config(self, model_context: int) -> SchedulerConfig:
        max_model_len = self.max_model_len or min(model_context, _DEFAULT_MAX_MODEL_LEN)
        if max_model_len > model_context:
            raise ConfigError(f"max_model_len {max_model_len} exceeds the model's context {model_context}")
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
        )


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 matmul is slow on CPUs without native bf16; fp32 is the exact, fast-enough default there.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r} (choose from auto, {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_quantization(
    name: str, device: torch.device, dtype: torch.dtype, model: str | None = None, activation_bits: int | None = None
) -> QuantMethod | None:
    if activation_bits is not None and activation_bits not in ACTIVATION_BITS:
        raise ConfigError(f"unsupported activation_bits {activation_bits} (choose from {ACTIVATION_BITS})")
    stored = stored_packed_format(None if is_gguf(model) else model)
    if stored is not None:
        method = _stored_quantization(name, stored, device, dtype, model, activation_bits)
    else:
        method = _fresh_quantization(name, device, dtype, model, activation_bits)
    if activation_bits is not None and not isinstance(method, BlockMethod):
        raise ConfigError(
            f"activation_bits applies to block-quantized weights (gguf, int4, corral quantize directories), "
            f"not to quantization {name}"
        )
    return method


def _fresh_quantization(
    name: str, device: torch.device, dtype: torch.dtype, model: str | None, activation_bits: int | None
) -> QuantMethod | None:
    if name == "auto":
        name = _auto_quantization(device, dtype, model)
    if name == "none":
        return None
    if name not in QUANTIZATIONS:
        raise ConfigError(f"unsupported quantization {name!r} (choose from {', '.join(QUANTIZATIONS)})")
    _check_cpu_float32(name, device, dtype)
    if name == "int8":
        return Int8Method()
    # int4: round-to-nearest, group 32; gguf: the file's own Q4_0/Q4_1/Q8_0 blocks, kept packed
    return BlockMethod(
        name, linear_bits=4 if name == "int4" else 8, keeps_stored_blocks=name == "gguf",
        activation_bits=activation_bits or 8,
    )


def _stored_quantization(name: str, stored: PackedFormat, device: torch.device, dtype: torch.dtype, model: str | None,
                         activation_bits: int | None) -> QuantMethod | None:
    """A ``corral quantize`` directory runs as stored (auto) or dequantized to float (none), nothing else."""
    if name == "none":
        return None
    if name != "auto":
        raise ConfigError(
            f"{model} is already quantized ({stored.method}): use quantization auto to run it as stored, "
            "or none to dequantize it"
        )
    _check_cpu_float32(stored.method, device, dtype)
    return BlockMethod(
        stored.method, linear_bits=8, keeps_stored_blocks=True, activation_bits=activation_bits or stored.activation_bits
    )


def _check_cpu_float32(name: str, device: torch.device, dtype: torch.dtype) -> None:
    if device.type != "cpu" or dtype != torch.float32:
        raise ConfigError(f"quantization {name} runs on the CPU with dtype float32")


def resolve_kv_cache_dtype(name: str, quant_method: QuantMethod | None) -> str:
    """auto: int8 K/V beside quantized weights on the CPU (a quarter of fp32's memory; teacher-forced
    next-token agreement with the fp32 cache 91-98%), the model's dtype on the exact path."""
    if name not in KV_CACHE_DTYPES:
        raise ConfigError(f"unsupported kv_cache_dtype {name!r} (choose from {', '.join(KV_CACHE_DTYPES)})")
    if name == "auto":
        return "int8" if quant_method is not None else "model"
    return name


def _auto_quantization(device: torch.device, dtype: torch.dtype, model: str | None) -> str:
    """The fastest path the machine has: a GGUF file's own blocks on the C++ kernels (the fastest for one
    stream and for batches, and the closest to the file), else int8 on fbgemm, else the exact float path."""
    if device.type != "cpu" or dtype != torch.float32:
        return "none"
    if is_gguf(model) and cpu_extension.load() is not None:
        return "gguf"
    return "int8" if fbgemm_available() else "none"


def resolve_batched_linears(
    name: str, quant_method: QuantMethod | None, device: torch.device, batch_invariant: bool
) -> str:
    """``packed`` or ``bf16`` (config.BATCHED_LINEARS) for this engine's weights, device and mode."""
    if name not in BATCHED_LINEARS:
        raise ConfigError(f"unsupported batched_linears {name!r} (choose from {', '.join(BATCHED_LINEARS)})")
    packed = isinstance(quant_method, BlockMethod) and device.type == "cpu"
    if name == "auto":
        return "bf16" if packed and has_amx_bf16() and not batch_invariant else "packed"
    if name == "bf16" and not packed:
        raise ConfigError("batched_linears bf16 copies block-quantized weights (quantization gguf or int4, on the CPU)")
    if name == "bf16" and batch_invariant:
        raise ConfigError("batched_linears bf16 makes a row's rounding depend on its batch's size: not with batch_invariant")
    return name


def resolve_prefill_attention(
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    quant_method: QuantMethod | None = None,
    batch_invariant: bool = False,
) -> torch.dtype | None:
    """The dtype prefill SDPA runs in (config.PREFILL_ATTENTION), or None for the model's own. ``auto`` keeps
    the exact float path (quantization none) exact: bf16 only beside block-quantized weights."""
    if name not in PREFILL_ATTENTION:
        raise ConfigError(f"unsupported prefill_attention {name!r} (choose from {', '.join(PREFILL_ATTENTION)})")
    if name == "bfloat16" and batch_invariant:
        raise ConfigError("prefill_attention bfloat16 casts prefill SDPA, which batch_invariant never runs")
    if name == "auto":
        packed = isinstance(quant_method, BlockMethod) and not batch_invariant
        name = "bfloat16" if packed and device.type == "cpu" and dtype == torch.float32 and has_amx_bf16() else "model"
    return torch.bfloat16 if name == "bfloat16" else None


def is_gguf(model: str | None) -> bool:
    return model is None or str(model).lower().endswith(".gguf")  # None: the default model, a GGUF file


def calibration_token_ids(tokenizer: Tokenizer, num_tokens: int = 512) -> list[int]:
    return tokenizer.encode(stdlib_docstrings("train")[: num_tokens * 8])[:num_tokens]


def build_engine(args: EngineArgs) -> LLMEngine:
    spec = args.speculative()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    model_config, model, quant_method = _load(
        args.model, args.quantization, dtype, device, tokenizer, activation_bits=args.activation_bits
    )

    if resolve_batched_linears(args.batched_linears, quant_method, device, args.batch_invariant) == "bf16":
        added = keep_dense_copies_(model, DENSE_MIN_ROWS, DENSE_MIN_ROWS_WIDE, WIDE_LINEAR)
        logger.info("batches of %d rows or more (%d for the LM head) run on bf16 copies of the packed linears "
                    "(%.0f MiB)", DENSE_MIN_ROWS, DENSE_MIN_ROWS_WIDE, added / 2**20)

    scheduler_config = args.scheduler_config(model_config.max_position_embeddings)
    cache = args.cache_config(resolve_kv_cache_dtype(args.kv_cache_dtype, quant_method))
    num_blocks = num_blocks_for_budget(cache, model_config, dtype, device)
    if num_blocks * cache.block_size < scheduler_config.max_model_len:
        raise ConfigError(
            f"the KV cache holds {num_blocks * cache.block_size} tokens, fewer than max_model_len "
            f"{scheduler_config.max_model_len}: raise kv_cache_memory or lower max_model_len"
        )
    kv_caches = allocate_kv_caches(num_blocks, cache.block_size, model_config, dtype, device, cache.kv_cache_dtype)
    backend = _attention_backend(
        model, model_config, quant_method, cache.block_size, args.batch_invariant,
        resolve_prefill_attention(args.prefill_attention, dtype, device, quant_method, args.batch_invariant),
    )
    proposer, fallback, proposer_cost = None, None, 0.0
    if spec is not None:
        proposer, proposer_cost = _build_proposer(spec, args, model, model_config, tokenizer, dtype, device,
                                                  num_blocks, cache.block_size)
        if spec.method == "ngram_draft":  # the lookup first, the draft model for what it finds nothing for
            proposer, fallback = NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max), proposer
    eos = set(model_config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    grammars = llguidance_grammars(tokenizer.backend.to_str(), sorted(eos), model_config.vocab_size)
    runner = ModelRunner(
        model, kv_caches, backend, cache.block_size, model_config.vocab_size, device,
        proposer=proposer, num_speculative_tokens=0 if spec is None else spec.num_speculative_tokens,
        fallback_proposer=fallback,
        structured_stats=None if grammars is None else grammars.stats,
    )
    kv_manager = KVCacheManager(num_blocks, cache.block_size, cache.enable_prefix_caching)
    policy = None if spec is None else SpeculationPolicy(spec.num_speculative_tokens, adaptive=spec.adaptive,
                                                         proposer_cost=proposer_cost)
    core = EngineCore(Scheduler(scheduler_config, kv_manager), runner, policy)
    return LLMEngine(
        core, tokenizer, model_config.vocab_size, scheduler_config.max_model_len, frozenset(eos), grammars=grammars
    )


def _load(
    path: str | None,
    quantization: str,
    dtype: torch.dtype,
    device: torch.device,
    tokenizer: Tokenizer,
    num_layers: int | None = None,
    activation_bits: int | None = None,
) -> tuple[ModelConfig, torch.nn.Module, QuantMethod | None]:
    """A checkpoint's model (its first ``num_layers`` decoder layers, if given), packed as ``quantization`` says."""
    quant_method = resolve_quantization(quantization, device, dtype, path, activation_bits)
    keep_blocks = isinstance(quant_method, BlockMethod) and quant_method.keeps_stored_blocks
    if quant_method is not None and quant_method.name == "gguf" and not is_gguf(path):
        raise ConfigError(f"quantization gguf keeps a GGUF file's blocks, but {path} is not a .gguf file")
    model_config, weights = open_checkpoint(path, dtype, keep_quantized=keep_blocks)
    if num_layers is not None:
        model_config, weights = first_layers(model_config, weights, num_layers)
    # Activation-quantizing methods first fold outlier channels into the weights (SmoothQuant), from
    # statistics of a short calibration pass over built-in text, run layer by layer as the model loads.
    calibration_ids = (
        calibration_token_ids(tokenizer) if quant_method is not None and quant_method.quantizes_activations else None
    )
    model = load_model(model_config, weights, dtype, device, quant_method, calibration_ids)
    del weights  # closes the checkpoint's file mappings
    if isinstance(quant_method, BlockMethod):
        set_activation_bits_(model, quant_method.activation_bits)  # blocks the checkpoint stored packed, too
    if quant_method is not None:
        logger.info("weights quantized: %s", quant_method.name)
    release_free_memory()
    return model_config, model, quant_method


def _attention_backend(
    model: torch.nn.Module,
    config: ModelConfig,
    quant_method: QuantMethod | None,
    block_size: int,
    batch_invariant: bool,
    prefill_dtype: torch.dtype | None = None,
) -> TorchPagedAttention:
    backend = TorchPagedAttention(
        config.num_attention_heads, config.num_key_value_heads, config.head_size, block_size,
        batch_invariant=batch_invariant, prefill_dtype=prefill_dtype,
    )
    if isinstance(quant_method, BlockMethod) and model.fuse_decode_layers_(block_size):
        logger.info("decode steps run one fused C++ call per layer")
    if batch_invariant and not _linears_are_row_independent(quant_method):
        logger.warning(
            "batch_invariant: attention runs per token, but this path's linears are a float matrix product whose "
            "rounding depends on how many rows share it, so outputs can still change with batching and "
            "speculation; row-independent linears need quantized weights and the C++ kernels (%s)",
            cpu_extension.build_problem() or f"quantization {quant_method.name if quant_method else 'none'}",
        )
    return backend


def _linears_are_row_independent(quant_method: QuantMethod | None) -> bool:
    """Whether a row's linear outputs are independent of the other rows in the batch: int8 (integer GEMM) or
    block-packed weights on the C++ kernels; not float weights or the block formats' torch reference."""
    if isinstance(quant_method, Int8Method):
        return True
    return isinstance(quant_method, BlockMethod) and cpu_extension.load() is not None


def _build_proposer(spec: SpeculativeConfig, args: EngineArgs, target: torch.nn.Module, target_config: ModelConfig,
                    tokenizer: Tokenizer, dtype: torch.dtype, device: torch.device, num_blocks: int,
                    block_size: int) -> tuple[Proposer, float]:
    """The proposer, and what proposing one draft costs in target decode steps (for the speculation policy)."""
    if spec.method == "ngram":
        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max), 0.0
    if spec.method == "draft_head":
        # auto: int4 on the C++ kernels, whose one-row products beat fbgemm's int8 at a head's sizes (1.9 vs 3.1 ms a proposal)
        name = "int4" if spec.quantization == "auto" and (device.type, dtype) == ("cpu", torch.float32) and cpu_extension.load() else spec.quantization
        quant_method = resolve_quantization(name, device, dtype, spec.model)
        return draft_head_proposer(spec.model, quant_method, target, target_config, device)
    # A draft model: its own weights, KV pool (as many blocks as the target's, so it never runs out first)
    # and attention backend; it must share the target's vocabulary, token for token.
    path = spec.model or args.model
    config, model, quant_method = _load(path, spec.quantization, dtype, device, tokenizer, spec.draft_num_layers)
    if config.vocab_size != target_config.vocab_size:
        raise ConfigError(
            f"the draft model's vocabulary ({config.vocab_size} tokens) differs from the target's "
            f"({target_config.vocab_size}): a draft model must share the target's tokenizer"
        )
    kv_cache_dtype = resolve_kv_cache_dtype(args.kv_cache_dtype, quant_method)
    kv_caches = allocate_kv_caches(num_blocks, block_size, config, dtype, device, kv_cache_dtype)
    backend = _attention_backend(model, config, quant_method, block_size, args.batch_invariant)
    proposer = DraftModelProposer(model, kv_caches, backend, block_size, num_blocks, config.vocab_size, device)
    return proposer, relative_step_cost(config, target_config)
