"""ModelConfig: the shape of a Llama-family decoder, independent of the file it came from."""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import UnsupportedModelError


@dataclass(frozen=True)
class RopeScaling:
    """llama3-style RoPE frequency scaling (``rope_type == "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family model, named as in HF ``config.json``."""

    architecture: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # A draft model's reduced LM head: logits over only this many token ids (the checkpoint's
    # ``lm_head.token_ids``, most frequent first); None: over the whole vocabulary.
    draft_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ("llama", "qwen2"):
            raise UnsupportedModelError(f"unsupported architecture {self.architecture!r} (supported: llama, qwen2)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.draft_vocab_size is not None and not 1 <= self.draft_vocab_size <= self.vocab_size:
            raise UnsupportedModelError(
                f"draft_vocab_size must be in [1, vocab_size {self.vocab_size}], got {self.draft_vocab_size}"
            )

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads
