"""GGUF checkpoints: metadata -> ModelConfig, tensors under Hugging Face Llama names: dequantized to float,
or, with ``keep_quantized``, Q4_0/Q4_1/Q8_0 matrices handed over as packed ``BlockQuantized`` (no float copy).

llama.cpp's converter permutes the rows of q_proj/k_proj (weights and biases) of ``llama`` models so
that each head's rotary pairs are interleaved (its "normal" RoPE); ``load_gguf`` undoes that, so the
weights equal the HF checkpoint and HF's rotate-half RoPE applies. ``qwen2`` files use NeoX RoPE and
are stored unpermuted.

llama3 RoPE scaling is stored by llama.cpp not as metadata but as a ``rope_freqs.weight`` tensor of
per-frequency divisors. ``read_gguf_config`` turns it back into a ``RopeScaling``, assuming the values
every Llama 3.x release uses (low_freq_factor 1, high_freq_factor 4, original context from
``{arch}.rope.scaling.original_context_length`` or 8192), and refuses the file if the tensor does not
match them; the tensor itself is not part of the returned state dict.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.loader.gguf_file import GGUFFile, GGUFTensor, read_gguf_file
from corral.loader.lazy import LazyWeights
from corral.loader.names import check_shapes
from corral.models.spec import ModelConfig, RopeScaling
from corral.quantization.blockwise import BlockQuantized

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
DEQUANTIZABLE_TYPES = frozenset(
    {QType.F32, QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q4_K, QType.Q5_K, QType.Q6_K}
)
ROPE_FREQS = "rope_freqs.weight"
_DEFAULT_LLAMA3_LOW_FREQ_FACTOR = 1.0
_DEFAULT_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_DEFAULT_LLAMA3_ORIGINAL_CONTEXT = 8192

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")
_REQUIRED = object()
# bytes of one block of 32 weights: float16 scale [, float16 min], then the codes
_BLOCK_LAYOUTS = {QType.Q4_0: (18, False), QType.Q4_1: (20, True), QType.Q8_0: (34, False)}


def hf_weight_name(gguf_name: str) -> str:
    """The Hugging Face Llama name of a llama.cpp tensor name (``blk.3.attn_q.weight`` -> ...)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise UnsupportedModelError(f"unexpected tensor {gguf_name!r} in GGUF file")


def read_gguf_config(reader: GGUFFile) -> ModelConfig:
    """Build the ModelConfig of a parsed GGUF file from its metadata and tensor table."""
    arch = reader.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def meta(key: str, default: Any = _REQUIRED) -> Any:
        if key in reader.metadata:
            return reader.metadata[key]
        if default is _REQUIRED:
            raise ModelLoadError(f"GGUF metadata lacks {key!r}: {reader.path}")
        return default

    num_heads = meta(f"{arch}.attention.head_count")
    num_kv_heads = meta(f"{arch}.attention.head_count_kv", num_heads)
    if isinstance(num_heads, list) or isinstance(num_kv_heads, list):
        raise UnsupportedModelError(f"per-layer head counts are not supported: {reader.path}")
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ModelLoadError(f"invalid {arch}.attention.head_count {num_heads!r}: {reader.path}")
    hidden_size = meta(f"{arch}.embedding_length")
    head_size = meta(f"{arch}.attention.key_length", hidden_size // num_heads)
    # None when it is the derived default, so that equal models get equal configs from any loader
    head_dim = None if head_size == hidden_size // num_heads else head_size
    rope_dims = meta(f"{arch}.rope.dimension_count", head_size)
    if rope_dims != head_size:
        raise UnsupportedModelError(
            f"partial rotary embeddings ({rope_dims} of {head_size}) are not supported"
        )
    rope_theta = float(meta(f"{arch}.rope.freq_base", 10000.0))
    tensors = reader.tensors
    return ModelConfig(
        architecture=arch,
        vocab_size=_vocab_size(reader, meta),
        hidden_size=hidden_size,
        intermediate_size=meta(f"{arch}.feed_forward_length"),
        num_hidden_layers=meta(f"{arch}.block_count"),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=meta(f"{arch}.context_length"),
        rms_norm_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=rope_theta,
        rope_scaling=_rope_scaling(reader, rope_theta, head_size),
        head_dim=head_dim,
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        bos_token_id=meta("tokenizer.ggml.bos_token_id", None),
        eos_token_ids=_eos_token_ids(reader.metadata),
    )


def load_gguf(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a llama/qwen2 GGUF file: its config and dequantized weights under HF names, cast to ``dtype``."""
    config, weights = open_gguf(path, dtype)
    return config, weights.materialize()


def open_gguf(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, keep_quantized: bool = False
) -> tuple[ModelConfig, LazyWeights]:
    """Like ``load_gguf``, but each weight is converted when it is read from the returned mapping; with
    ``keep_quantized``, Q4_0/Q4_1/Q8_0 matrices come back as ``BlockQuantized`` instead of float."""
    path = os.fspath(path)
    reader = read_gguf_file(path)
    config = read_gguf_config(reader)
    try:
        named = {hf_weight_name(t.name): t for t in reader.tensors.values() if t.name != ROPE_FREQS}
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{e}: {path}") from None
    for tensor in named.values():
        if tensor.qtype not in DEQUANTIZABLE_TYPES:
            raise UnsupportedModelError(
                f"tensor {tensor.name!r} has type {tensor.qtype.name}, which corral cannot dequantize "
                f"(supported: {', '.join(sorted(t.name for t in DEQUANTIZABLE_TYPES))}): {path}"
            )
    shapes = {name: tensor.shape for name, tensor in named.items()}
    check_shapes(config, shapes, path)

    # one tensor at a time: threads measured slower (gguf's kernels hold the GIL between numpy calls)
    def read(name: str) -> torch.Tensor | BlockQuantized:
        tensor = named[name]
        if keep_quantized and tensor.qtype in _BLOCK_LAYOUTS and len(tensor.shape) == 2:
            weight = _to_blocks(name, tensor, config)
        else:
            weight = _to_torch(name, tensor, config, dtype)
        reader.evict(named[name])
        return weight

    return config, LazyWeights(shapes, read)


def llama3_rope_factors(scaling: RopeScaling, rope_theta: float, head_size: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for llama3 scaling: the divisor of each rotary frequency, [head_size // 2]."""
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    wavelen = 2 * math.pi / inv_freq
    old_context = scaling.original_max_position_embeddings
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    factors = np.where(wavelen > old_context / scaling.low_freq_factor, scaling.factor, blended)
    factors = np.where(wavelen < old_context / scaling.high_freq_factor, 1.0, factors)
    return factors.astype(np.float32)


def _to_torch(name: str, tensor: GGUFTensor, config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    weight = torch.from_numpy(_dequantize(tensor))
    if config.architecture == "llama":
        weight = _unpermute_qk(name, weight, config)
    return weight.to(dtype)


def _to_blocks(name: str, tensor: GGUFTensor, config: ModelConfig) -> BlockQuantized:
    """A Q4_0/Q4_1/Q8_0 matrix as blocks of group 32, copied out of the file mapping; its dequantized
    values equal gguf's dequantization bit for bit."""
    block_bytes, has_min = _BLOCK_LAYOUTS[tensor.qtype]
    rows = tensor.shape[0]
    raw = tensor.data.reshape(rows, -1, block_bytes)  # [rows, num_blocks, block_bytes]
    scales = torch.from_numpy(np.ascontiguousarray(raw[:, :, 0:2]).view(np.float16).reshape(rows, -1))
    codes_start = 4 if has_min else 2
    codes = torch.from_numpy(np.ascontiguousarray(raw[:, :, codes_start:]).reshape(rows, -1))
    if tensor.qtype == QType.Q8_0:
        blocks = BlockQuantized(8, 32, codes.view(torch.int8), scales, None)
    elif has_min:  # Q4_1: w = scale * q + min
        mins = torch.from_numpy(np.ascontiguousarray(raw[:, :, 2:4]).view(np.float16).reshape(rows, -1))
        blocks = BlockQuantized(4, 32, codes, scales, mins)
    else:  # Q4_0: w = scale * (q - 8)
        blocks = BlockQuantized(4, 32, codes, scales, scales * -8)
    if config.architecture == "llama":
        permutation = _unpermute_qk(name, torch.arange(rows), config)
        if not torch.equal(permutation, torch.arange(rows)):
            blocks = blocks.take_rows(permutation)
    return blocks


def _dequantize(tensor: GGUFTensor) -> np.ndarray:
    values = dequantize(tensor.data, tensor.qtype)  # float32 [*shape]
    if not values.flags.writeable:
        values = values.copy()  # F32 comes back as a view of the read-only file mapping
    assert values.shape == tensor.shape, (tensor.name, values.shape, tensor.shape)
    return values


def _unpermute_qk(name: str, weight: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        num_heads = config.num_attention_heads
    elif name.endswith(("k_proj.weight", "k_proj.bias")):
        num_heads = config.num_key_value_heads
    else:
        return weight
    # llama.cpp stored rows as [head, rotary_pair, 2]; HF wants [head, 2 (half), rotary_pair]
    rest = weight.shape[1:]
    return weight.reshape(num_heads, -1, 2, *rest).transpose(1, 2).reshape(weight.shape).contiguous()


def _vocab_size(reader: GGUFFile, meta: Any) -> int:
    embedding = reader.tensors.get("token_embd.weight")
    if embedding is not None:
        return embedding.shape[0]
    return meta(f"{reader.architecture}.vocab_size")


def _eos_token_ids(metadata: dict[str, Any]) -> tuple[int, ...]:
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    ids = [int(metadata[k]) for k in keys if k in metadata]
    return tuple(dict.fromkeys(ids))


def _rope_scaling(reader: GGUFFile, rope_theta: float, head_size: int) -> RopeScaling | None:
    arch = reader.architecture
    scaling_type = reader.metadata.get(f"{arch}.rope.scaling.type", "none")
    freqs = reader.tensors.get(ROPE_FREQS)
    if scaling_type not in ("none", "llama3"):
        raise UnsupportedModelError(f"RoPE scaling type {scaling_type!r} is not supported: {reader.path}")
    if freqs is None:
        if scaling_type == "llama3":
            raise ModelLoadError(f"llama3 RoPE scaling without a {ROPE_FREQS} tensor: {reader.path}")
        return None
    if freqs.qtype not in (QType.F32, QType.F16):
        raise UnsupportedModelError(f"{ROPE_FREQS} has type {freqs.qtype.name}: {reader.path}")
    factors = dequantize(freqs.data, freqs.qtype).reshape(-1)
    if factors.shape != (head_size // 2,):
        raise ModelLoadError(
            f"{ROPE_FREQS} has {factors.size} values, expected {head_size // 2}: {reader.path}"
        )
    if np.allclose(factors, 1.0):
        return None
    scaling = RopeScaling(
        factor=float(factors.max()),
        low_freq_factor=_DEFAULT_LLAMA3_LOW_FREQ_FACTOR,
        high_freq_factor=_DEFAULT_LLAMA3_HIGH_FREQ_FACTOR,
        original_max_position_embeddings=int(
            reader.metadata.get(
                f"{arch}.rope.scaling.original_context_length", _DEFAULT_LLAMA3_ORIGINAL_CONTEXT
            )
        ),
    )
    if not np.allclose(llama3_rope_factors(scaling, rope_theta, head_size), factors, rtol=1e-4, atol=1e-6):
        raise UnsupportedModelError(
            f"{ROPE_FREQS} does not match llama3 scaling with factor {scaling.factor}, low/high freq factors "
            f"1/4 and original context {scaling.original_max_position_embeddings}: {reader.path}"
        )
    return scaling
