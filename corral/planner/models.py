"""Model shapes: the hyper-parameters that set memory and FLOPs, the tensors they imply, and a built-in
table of common models (values from each model's Hugging Face ``config.json``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from corral.errors import ConfigError

# What a tensor does, which decides its format (formats.WeightFormat) and whether a token reads it.
ROLES = ("embedding", "lm_head", "linear", "expert", "router", "norm", "bias")


@dataclass(frozen=True)
class TensorSpec:
    """One weight tensor, shaped as torch shapes it (``[out_features, in_features]`` for a matrix).
    ``gguf_type``: the GGML type id the file stores it in, for shapes read from a GGUF file."""

    name: str
    shape: tuple[int, ...]
    role: str
    layer: int | None = None
    gguf_type: int | None = None

    @property
    def numel(self) -> int:
        total = 1
        for dim in self.shape:
            total *= dim
        return total


@dataclass(frozen=True)
class ModelShape:
    """A Llama-family decoder (Llama, Qwen2/2.5/3, SmolLM, Mixtral's MoE), named as in HF ``config.json``."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    qk_norm: bool = False  # an RMSNorm over each head's q and k (Qwen3)
    num_local_experts: int = 0  # 0: a dense MLP; Mixtral: 8 experts, of which num_experts_per_tok run
    num_experts_per_tok: int = 0
    torch_dtype: str = "bf16"  # the checkpoint's own dtype
    source: str = ""  # where the shape came from: a file, a config.json, or the built-in table's HF repo
    # Read from a GGUF file: its tensors with their stored types (empty otherwise).
    file_tensors: tuple[TensorSpec, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers,
               self.num_attention_heads, self.num_key_value_heads) < 1:
            raise ConfigError(f"model {self.name}: sizes and counts must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"model {self.name}: {self.num_attention_heads} attention heads are not a multiple "
                              f"of {self.num_key_value_heads} KV heads")
        if self.num_local_experts and not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ConfigError(f"model {self.name}: num_experts_per_tok must be in [1, {self.num_local_experts}]")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    def tensors(self) -> tuple[TensorSpec, ...]:
        """Every weight: the file's own list for a GGUF file, else the list the config implies."""
        return self.file_tensors or self.implied_tensors()

    def implied_tensors(self) -> tuple[TensorSpec, ...]:
        return _implied_tensors(self)

    def _build_implied_tensors(self) -> tuple[TensorSpec, ...]:
        hidden = self.hidden_size
        q_size = self.num_attention_heads * self.head_size
        kv_size = self.num_key_value_heads * self.head_size
        specs = [TensorSpec("model.embed_tokens.weight", (self.vocab_size, hidden), "embedding")]
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            specs += [
                TensorSpec(p + "input_layernorm.weight", (hidden,), "norm", i),
                TensorSpec(p + "post_attention_layernorm.weight", (hidden,), "norm", i),
                TensorSpec(p + "self_attn.q_proj.weight", (q_size, hidden), "linear", i),
                TensorSpec(p + "self_attn.k_proj.weight", (kv_size, hidden), "linear", i),
                TensorSpec(p + "self_attn.v_proj.weight", (kv_size, hidden), "linear", i),
                TensorSpec(p + "self_attn.o_proj.weight", (hidden, q_size), "linear", i),
            ]
            if self.attention_bias:
                specs += [TensorSpec(p + f"self_attn.{n}_proj.bias", (size,), "bias", i)
                          for n, size in (("q", q_size), ("k", kv_size), ("v", kv_size))]
            if self.qk_norm:
                specs += [TensorSpec(p + f"self_attn.{n}_norm.weight", (self.head_size,), "norm", i) for n in "qk"]
            specs += self._mlp_tensors(p, i)
        specs.append(TensorSpec("model.norm.weight", (hidden,), "norm"))
        if not self.tie_word_embeddings:
            specs.append(TensorSpec("lm_head.weight", (self.vocab_size, hidden), "lm_head"))
        return tuple(specs)

    def _mlp_tensors(self, prefix: str, layer: int) -> list[TensorSpec]:
        hidden, inter = self.hidden_size, self.intermediate_size
        if not self.is_moe:
            return [TensorSpec(prefix + f"mlp.{n}_proj.weight", shape, "linear", layer)
                    for n, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)), ("down", (hidden, inter)))]
        p = prefix + "block_sparse_moe."
        specs = [TensorSpec(p + "gate.weight", (self.num_local_experts, hidden), "router", layer)]
        for e in range(self.num_local_experts):
            specs += [TensorSpec(p + f"experts.{e}.{n}.weight", shape, "expert", layer)
                      for n, shape in (("w1", (inter, hidden)), ("w3", (inter, hidden)), ("w2", (hidden, inter)))]
        return specs

    def num_parameters(self) -> int:
        """Parameters as the checkpoint counts them (a tied head once)."""
        return sum(t.numel for t in self.implied_tensors())

    def matmul_parameters_per_token(self) -> int:
        """Weights one token multiplies by in the decoder layers (``num_experts_per_tok`` experts of an MoE
        layer), LM head excluded: 2 FLOPs each per token."""
        per_layer_expert = 3 * self.hidden_size * self.intermediate_size
        total = 0
        for t in self.implied_tensors():
            if t.role in ("linear", "router"):
                total += t.numel
        if self.is_moe:
            total += self.num_hidden_layers * self.num_experts_per_tok * per_layer_expert
        return total


def _shape(name: str, repo: str, **values: Any) -> ModelShape:
    return ModelShape(name=name, source=f"built-in table (https://huggingface.co/{repo}, config.json)", **values)


_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072)
_QWEN = dict(vocab_size=151936, max_position_embeddings=32768)
_QWEN_BIG = dict(vocab_size=152064, max_position_embeddings=32768)
_QWEN3 = dict(vocab_size=151936, max_position_embeddings=40960, head_dim=128, qk_norm=True)
_SMOL = dict(vocab_size=49152, tie_word_embeddings=True)

BUILTIN_MODELS: dict[str, ModelShape] = {s.name: s for s in (
    _shape("llama-3.2-1b", "meta-llama/Llama-3.2-1B", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
           num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, **_LLAMA3),
    _shape("llama-3.2-3b", "meta-llama/Llama-3.2-3B", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
           num_attention_heads=24, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, **_LLAMA3),
    _shape("llama-3.1-8b", "meta-llama/Llama-3.1-8B", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=8, **_LLAMA3),
    _shape("llama-3.1-70b", "meta-llama/Llama-3.1-70B", hidden_size=8192, intermediate_size=28672,
           num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, **_LLAMA3),
    _shape("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
           num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, **_QWEN),
    _shape("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
           num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, **_QWEN),
    _shape("qwen2.5-3b", "Qwen/Qwen2.5-3B", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
           num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, **_QWEN),
    _shape("qwen2.5-7b", "Qwen/Qwen2.5-7B", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
           num_attention_heads=28, num_key_value_heads=4, attention_bias=True, **_QWEN_BIG),
    _shape("qwen2.5-14b", "Qwen/Qwen2.5-14B", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
           num_attention_heads=40, num_key_value_heads=8, attention_bias=True, **_QWEN_BIG),
    _shape("qwen2.5-32b", "Qwen/Qwen2.5-32B", hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
           num_attention_heads=40, num_key_value_heads=8, attention_bias=True, **_QWEN_BIG),
    _shape("qwen2.5-72b", "Qwen/Qwen2.5-72B", hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
           num_attention_heads=64, num_key_value_heads=8, attention_bias=True, **_QWEN_BIG),
    _shape("qwen3-0.6b", "Qwen/Qwen3-0.6B", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
           num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True, **_QWEN3),
    _shape("qwen3-1.7b", "Qwen/Qwen3-1.7B", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
           num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True, **_QWEN3),
    _shape("qwen3-4b", "Qwen/Qwen3-4B", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, **_QWEN3),
    _shape("qwen3-8b", "Qwen/Qwen3-8B", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
           num_attention_heads=32, num_key_value_heads=8, **_QWEN3),
    _shape("qwen3-14b", "Qwen/Qwen3-14B", hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
           num_attention_heads=40, num_key_value_heads=8, **_QWEN3),
    _shape("qwen3-32b", "Qwen/Qwen3-32B", hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
           num_attention_heads=64, num_key_value_heads=8, **_QWEN3),
    _shape("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", vocab_size=32000, hidden_size=4096,
           intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
           max_position_embeddings=32768, num_local_experts=8, num_experts_per_tok=2),
    _shape("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", hidden_size=576, intermediate_size=1536,
           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, **_SMOL),
    _shape("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", hidden_size=960, intermediate_size=2560,
           num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192, **_SMOL),
    _shape("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", hidden_size=2048, intermediate_size=8192,
           num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
           **_SMOL),
)}


def builtin_model(name: str) -> ModelShape | None:
    return BUILTIN_MODELS.get(name.lower())


@functools.lru_cache(maxsize=32)
def _implied_tensors(model: ModelShape) -> tuple[TensorSpec, ...]:
    """Cached: recommendations plan one model hundreds of times (a frozen shape is its own key)."""
    return model._build_implied_tensors()
