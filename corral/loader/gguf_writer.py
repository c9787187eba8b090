"""Write small GGUF files the way llama.cpp's converter would, for tests of anything that reads GGUF.

q_proj/k_proj rows of ``llama`` models are permuted as llama.cpp does, so readers must undo it;
norms and biases are stored as F32 like llama.cpp does; llama3 RoPE scaling becomes ``rope_freqs.weight``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from corral.loader.gguf import ROPE_FREQS, llama3_rope_factors
from corral.loader.names import check_state_dict
from corral.models.spec import ModelConfig

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    extra_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``state_dict`` (HF names) as a GGUF file, 2-D weights quantized to ``qtype``.

    ``qtype`` must be one that ``gguf.quants.quantize`` implements (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
    Q5_0, Q5_1, ...; not the K-quants) and divide the rows into whole blocks.
    """
    check_state_dict(config, state_dict, "write_tiny_gguf")
    encoded = {}
    for name, tensor in state_dict.items():
        values = tensor.detach().float().cpu().numpy()
        kind = qtype if values.ndim == 2 else GGMLQuantizationType.F32
        encoded[name] = (quantize(values, kind), kind)
    write_gguf_tensors(path, config, encoded, extra_metadata)


def write_gguf_tensors(
    path: str | os.PathLike[str],
    config: ModelConfig,
    encoded: Mapping[str, tuple[np.ndarray, GGMLQuantizationType]],
    extra_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write already-encoded tensors (HF names, HF row order; ``uint8`` bytes for quantized types)."""
    writer = GGUFWriter(os.fspath(path), config.architecture)
    _add_config(writer, config)
    for key, value in (extra_metadata or {}).items():
        _add_value(writer, key, value)
    for name, (data, kind) in encoded.items():
        if config.architecture == "llama" and (".q_proj." in name or ".k_proj." in name):
            num_heads = config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads
            data = permute_rows_like_llama_cpp(data, num_heads)
        writer.add_tensor(gguf_tensor_name(name), data, raw_dtype=kind)
    if config.rope_scaling is not None:
        factors = llama3_rope_factors(config.rope_scaling, config.rope_theta, config.head_size)
        writer.add_tensor(ROPE_FREQS, factors, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def permute_rows_like_llama_cpp(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, interleave the two rotate-half halves."""
    # [head, half, pair, ...] -> [head, pair, half, ...]
    split = rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2)).reshape(rows.shape)


def gguf_tensor_name(hf_name: str) -> str:
    """The llama.cpp name of an HF Llama weight name."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[suffix]}"


def _add_config(writer: GGUFWriter, config: ModelConfig) -> None:
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_size)
    writer.add_vocab_size(config.vocab_size)
    if config.head_dim is not None:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.rope_scaling is not None:
        writer.add_rope_scaling_orig_ctx_len(config.rope_scaling.original_max_position_embeddings)
    if config.bos_token_id is not None:
        writer.add_bos_token_id(config.bos_token_id)
    eos_setters = (writer.add_eos_token_id, writer.add_eot_token_id, writer.add_eom_token_id)
    if len(config.eos_token_ids) > len(eos_setters):
        raise ValueError(f"GGUF holds at most {len(eos_setters)} end-of-sequence ids")
    for setter, token_id in zip(eos_setters, config.eos_token_ids, strict=False):
        setter(token_id)


def _add_value(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int32(key, value) if value < 0 else writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write metadata {key!r} of type {type(value).__name__}")
