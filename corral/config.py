"""Engine configuration: frozen dataclasses named as vLLM names them, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import ConfigError

# Weight formats a model can be loaded in (EngineArgs.quantization): auto: int8 on CPUs with fbgemm, else
# none; none: the exact float path; int8: int8 weights x int8 activations (fbgemm, fast for batches);
# int4: weights rounded to 4 bits in groups of 32; gguf: a GGUF file's Q4_0/Q4_1/Q8_0 weights as stored.
QUANTIZATIONS = ("auto", "none", "int8", "int4", "gguf")
# What `corral quantize --method` writes: int8 with a scale per output channel, or int4 in groups rounded to
# nearest, after AWQ's activation-aware scaling, or by GPTQ's error compensation.
QUANTIZE_METHODS = ("int8", "rtn-int4", "awq-int4", "gptq-int4")
# Calibration tokens `corral quantize` reads by default. GPTQ's Hessians (up to 1536 x 1536 here) keep
# improving up to ~16k tokens (held-out perplexity 11.98 at 16k vs 11.97 at 32k); AWQ's search costs time in
# proportion and gains little past 2k (11.67 vs 11.63 at 8k).
CALIBRATION_TOKENS = {"gptq-int4": 16384}
DEFAULT_CALIBRATION_TOKENS = 2048
# Steps of end-to-end tuning of int4 groups' scales and mins after awq/gptq (compress/tuning.py), each on
# 4 x 256 tokens: on the default model, packed, awq's held-out perplexity goes 11.195 -> 11.133 -> 11.089
# at 16 -> 48 -> 96 steps (the last over 32k tokens), gptq's 11.129 -> 11.106 -> 10.957 (about 8 s a step here).
DEFAULT_TUNE_STEPS = 96
# How finely the block kernels round a linear's input (kernels/block_linear.py): 8 bits, as llama.cpp does
# (the fastest), or 16 as two int8 planes (twice the integer work: on the default model 1.2x the time of a
# linear at one row, 1.7x at 32). `corral quantize` directories run at 16 unless written with 8: their
# weights are meant to be the only rounding (at 8 bits, awq-int4 g64's held-out perplexity is 0.7% worse);
# GGUF files and int4 run at 8.
ACTIVATION_BITS = (8, 16)
DEFAULT_QUANTIZED_ACTIVATION_BITS = 16
# auto: int8 when the weights run quantized on the CPU, else the model's dtype ("model")
KV_CACHE_DTYPES = ("auto", "model", "int8")
# How block-quantized linears run on big batches (prefill chunks, mixed steps, many decodes, the LM head):
# packed: the block kernels only; bf16: also a bf16 copy of their weights (2 bytes a parameter), used for
# inputs of at least DENSE_MIN_ROWS rows (DENSE_MIN_ROWS_WIDE for the LM head), where oneDNN runs it on AMX
# tiles; auto: bf16 where the CPU has AMX (amx_bf16) and batch_invariant is off (which path a row takes then
# depends on its batch), else packed.
BATCHED_LINEARS = ("auto", "packed", "bf16")
# The crossovers measured on the AMX host (docs/performance.md, "Matrix units"): a decoder layer's linears
# (576 to 3072 outputs) from about 16 rows, the LM head (49152 outputs) from about 8.
DENSE_MIN_ROWS = 16
DENSE_MIN_ROWS_WIDE = 8
WIDE_LINEAR = 16384  # outputs from which a linear counts as wide
# The dtype of prefill attention (each prefill chunk's dense SDPA; decodes and batch-invariant mode use the
# per-token kernel): model: the model's; bfloat16: q, k and v cast to bf16 for it (3x faster at 512 to 2,048
# tokens on the AMX host); auto: bfloat16 where the CPU has AMX, the model runs in float32 and its weights
# are block-quantized (the exact path stays exact), else model. batch_invariant attends every token per token:
# no SDPA, so bfloat16 is refused there.
PREFILL_ATTENTION = ("auto", "model", "bfloat16")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block size and how much memory the pool may take."""

    block_size: int = 4
    # Bytes for the KV pool (an int), or a fraction (0, 1] of the memory available at start-up.
    kv_cache_memory: int | float = 512 * 1024**2
    enable_prefix_caching: bool = True
    # Fixes the pool size in blocks, overriding kv_cache_memory (tests use it to force preemption).
    num_gpu_blocks_override: int | None = None
    # model: the model's dtype; int8: codes with one float32 scale per token and KV head (kernels/kv_int8.py)
    kv_cache_dtype: str = "model"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        mem = self.kv_cache_memory
        if isinstance(mem, float) and not 0.0 < mem <= 1.0:
            raise ConfigError(f"kv_cache_memory as a fraction must be in (0, 1], got {mem}")
        if isinstance(mem, int) and mem <= 0:
            raise ConfigError(f"kv_cache_memory in bytes must be positive, got {mem}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ConfigError("num_gpu_blocks_override must be >= 1")
        if self.kv_cache_dtype not in ("model", "int8"):
            raise ConfigError(f"unsupported kv_cache_dtype {self.kv_cache_dtype!r} (choose from model, int8)")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits for one engine step."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < 1:
            raise ConfigError("max_num_batched_tokens must be >= 1")
        if self.max_model_len < 2:
            raise ConfigError("max_model_len must be >= 2")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                "without chunked prefill, max_num_batched_tokens must be >= max_model_len "
                f"({self.max_num_batched_tokens} < {self.max_model_len})"
            )


SPECULATIVE_METHODS = ("ngram", "draft_model", "ngram_draft", "draft_head")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding (``LLM(speculative_config={...})``), fields named as vLLM names them.

    A proposer guesses up to ``num_speculative_tokens`` tokens per sequence; the target model checks them
    all in one pass and keeps the longest prefix its own sampling agrees with, so the output distribution
    is the target's. ``ngram`` looks the last ``prompt_lookup_max`` .. ``prompt_lookup_min`` tokens up in
    the sequence itself; ``draft_model`` runs a smaller model with the same tokenizer (``model``; None:
    the target's own checkpoint, cut to its first ``draft_num_layers`` layers when that is set);
    ``ngram_draft`` (corral's own) looks up first and runs the draft model only for the sequences the lookup
    finds nothing for, so text that copies its input drafts for free and the rest still gets a draft.
    ``draft_head`` (``model``: a ``corral distill --draft-head-for`` directory) drafts from the target's own
    last hidden state with a small network, so it needs no KV cache and no model of its own.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    model: str | None = None
    draft_num_layers: int | None = None
    quantization: str = "auto"  # the draft model's (or draft head's) weights (one of QUANTIZATIONS)
    # Lower a sequence's speculation when its drafts keep being rejected, down to none (see engine/spec_policy).
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ConfigError(
                f"unsupported speculative method {self.method!r} (choose from {', '.join(SPECULATIVE_METHODS)})"
            )
        if not isinstance(self.num_speculative_tokens, int) or not 1 <= self.num_speculative_tokens <= 16:
            raise ConfigError(f"num_speculative_tokens must be an integer in [1, 16], got {self.num_speculative_tokens!r}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ConfigError(
                "prompt_lookup_min and prompt_lookup_max must satisfy 1 <= min <= max, "
                f"got {self.prompt_lookup_min} and {self.prompt_lookup_max}"
            )
        if self.draft_num_layers is not None and self.draft_num_layers < 1:
            raise ConfigError(f"draft_num_layers must be >= 1, got {self.draft_num_layers}")
        if self.method == "ngram" and (self.model is not None or self.draft_num_layers is not None):
            raise ConfigError("model and draft_num_layers apply to methods draft_model and ngram_draft (model also to "
                              "draft_head), not ngram")
        if self.method == "draft_head" and self.model is None:
            raise ConfigError("method draft_head needs model: the directory `corral distill --draft-head-for` wrote")
        if self.method == "draft_head" and self.draft_num_layers is not None:
            raise ConfigError("draft_num_layers applies to methods draft_model and ngram_draft, not draft_head")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"unsupported draft quantization {self.quantization!r} (choose from {', '.join(QUANTIZATIONS)})")

    @classmethod
    def from_dict(cls, values: dict) -> SpeculativeConfig:
        """From ``speculative_config={...}``; an unknown key is a ConfigError, not silently ignored."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown speculative_config keys: {', '.join(unknown)}")
        lookup = sorted({"prompt_lookup_min", "prompt_lookup_max"} & set(values))
        if values.get("method") in ("draft_model", "draft_head") and lookup:
            raise ConfigError(f"{', '.join(lookup)} apply to methods ngram and ngram_draft, not {values['method']}")
        if values.get("method", "ngram") == "ngram" and "quantization" in values:
            raise ConfigError("quantization (the draft model's weights) applies to methods draft_model, "
                              "ngram_draft and draft_head, not ngram")
        return cls(**values)
