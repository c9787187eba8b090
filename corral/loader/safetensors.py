"""Hugging Face checkpoint directories: ``config.json`` -> ModelConfig, ``*.safetensors`` -> state dict.

Reads both config layouts: transformers 4 (``rope_theta`` and ``rope_scaling`` at the top level) and
transformers 5 (``rope_parameters`` holding both). ``save_hf_dir`` writes the transformers 4 layout,
which both versions read.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.loader.lazy import LazyWeights
from corral.loader.names import check_shapes, check_state_dict
from corral.loader.packed import PackedFormat, packed_shapes, packed_tensors, read_packed
from corral.models.spec import ModelConfig, RopeScaling
from corral.quantization.blockwise import BlockQuantized

_ARCHITECTURE_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# HF's own defaults for keys a config.json may omit
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768}
_DEFAULT_RMS_NORM_EPS = 1e-6
# corral's own key: the LM head scores only this many ids, listed by the tensor ``lm_head.token_ids``
DRAFT_VOCAB_KEY = "corral_draft_vocab_size"
# buffers some older checkpoints saved next to the weights; recomputed by the model
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def parse_hf_config(raw: Mapping[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the contents of an HF ``config.json``."""
    model_type = raw.get("model_type")
    if model_type not in _ARCHITECTURE_CLASSES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(_ARCHITECTURE_CLASSES)})"
        )
    architectures = raw.get("architectures") or [_ARCHITECTURE_CLASSES[model_type]]
    if architectures != [_ARCHITECTURE_CLASSES[model_type]]:
        raise UnsupportedModelError(f"architectures {architectures} are not supported for {model_type!r}")
    if raw.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    if raw.get("mlp_bias") or raw.get("use_sliding_window"):
        raise UnsupportedModelError("mlp_bias and sliding-window attention are not supported")
    try:
        num_heads = raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        return ModelConfig(
            architecture=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
            max_position_embeddings=raw.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type]),
            rms_norm_eps=float(raw.get("rms_norm_eps", _DEFAULT_RMS_NORM_EPS)),
            rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(rope),
            head_dim=_explicit_head_dim(raw.get("head_dim"), raw["hidden_size"], num_heads),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases and writes no attention_bias key
            attention_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_eos_token_ids(raw.get("eos_token_id")),
            draft_vocab_size=_draft_vocab_size(raw.get(DRAFT_VOCAB_KEY)),
        )
    except KeyError as e:
        raise ModelLoadError(f"config.json lacks {e.args[0]!r}") from e


def load_hf_dir(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Load an HF llama/qwen2 checkpoint directory (config.json + safetensors shards), cast to ``dtype``."""
    config, weights = open_hf_dir(path, dtype)
    return config, weights.materialize()


def open_hf_dir(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, keep_quantized: bool = False
) -> tuple[ModelConfig, LazyWeights]:
    """Like ``load_hf_dir``, but each tensor is read from its shard when it is read from the returned mapping.
    Packed weights (``loader.packed``) come back as ``BlockQuantized`` with ``keep_quantized``, else dequantized."""
    path = os.fspath(path)
    raw = read_hf_config(path)
    config = parse_hf_config(raw)
    packed_format = None if raw.get("quantization_config") is None else PackedFormat.from_json(raw["quantization_config"], path)

    shards = sorted(glob.glob(os.path.join(glob.escape(path), "*.safetensors")))
    if not shards:
        raise ModelLoadError(f"no *.safetensors files in {path} (other weight formats are not supported)")
    handles = {}  # name -> the open shard holding it (each maps its file; nothing is read yet)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for shard in shards:
        try:
            handle = safe_open(shard, framework="pt")
            names = list(handle.keys())
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"cannot read {shard}: {e}") from e
        for name in names:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # some tied checkpoints also store the (identical) head
            handles[name] = handle
            tensor_slice = handle.get_slice(name)
            shapes[name], dtypes[name] = tuple(tensor_slice.get_shape()), tensor_slice.get_dtype()
    shapes, prefixes = packed_shapes(shapes, dtypes, path)
    if prefixes and packed_format is None:
        raise ModelLoadError(f"{path}: packed weights but no quantization_config in config.json")
    check_shapes(config, shapes, path)

    def read_tensor(name: str) -> torch.Tensor:
        try:
            return handles[name].get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"cannot read {name} from {path}: {e}") from e

    def read(name: str) -> torch.Tensor | BlockQuantized:
        if name in prefixes:
            stored = {part: read_tensor(f"{prefixes[name]}.{part}") for part in ("qweight", "scales", "mins")
                      if f"{prefixes[name]}.{part}" in handles}
            blocks = read_packed(name, stored, packed_format, path)
            return blocks if keep_quantized else blocks.dequantize().to(dtype)
        tensor = read_tensor(name)
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return config, LazyWeights(shapes, read)


def read_hf_config(path: str) -> dict[str, Any]:
    """The parsed ``config.json`` of the HF directory ``path``."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(f"no config.json in {path}")
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {config_path}: {e}") from e
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_path} is not a JSON object")
    return raw


def stored_packed_format(path: str | os.PathLike[str] | None) -> PackedFormat | None:
    """The packed format of the HF directory ``path`` (None for float checkpoints and anything else)."""
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return None
    raw = read_hf_config(os.fspath(path)).get("quantization_config")
    return None if raw is None else PackedFormat.from_json(raw, os.fspath(path))


def save_hf_dir(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor | BlockQuantized],
    packed_format: PackedFormat | None = None,
) -> None:
    """Write ``config.json`` (as transformers writes it for LlamaForCausalLM / Qwen2ForCausalLM) and
    ``model.safetensors``. Packed weights need ``packed_format``, written as the ``quantization_config``."""
    os.makedirs(path, exist_ok=True)
    check_state_dict(config, state_dict, "save_hf_dir")
    raw = hf_config_dict(config)
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in state_dict.items():
        if isinstance(weight, BlockQuantized):
            if packed_format is None:
                raise ModelLoadError(f"save_hf_dir: {name} is packed but no packed format was given")
            tensors.update(packed_tensors(name, weight))
        else:
            tensors[name] = weight.detach().contiguous().cpu()
    if packed_format is not None:
        raw["quantization_config"] = packed_format.to_json()
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` contents for ``config`` (transformers 4 layout)."""
    eos = list(config.eos_token_ids)
    raw: dict[str, Any] = {
        "architectures": [_ARCHITECTURE_CLASSES[config.architecture]],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if config.draft_vocab_size is not None:
        raw[DRAFT_VOCAB_KEY] = config.draft_vocab_size
    if config.architecture == "llama":
        raw.update(attention_bias=config.attention_bias, mlp_bias=False)
    else:
        if not config.attention_bias:
            raise UnsupportedModelError("qwen2 checkpoints always have attention biases")
        raw.update(use_sliding_window=False, sliding_window=None)
    if config.rope_scaling is not None:
        s = config.rope_scaling
        raw["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    return raw


def _rope_scaling(rope: Mapping[str, Any]) -> RopeScaling | None:
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in ("default", None):
        return None
    if rope_type != "llama3":
        raise UnsupportedModelError(f"RoPE scaling type {rope_type!r} is not supported (only llama3)")
    try:
        return RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ModelLoadError(f"llama3 rope_scaling lacks {e.args[0]!r}") from e


def _explicit_head_dim(head_dim: int | None, hidden_size: int, num_heads: int) -> int | None:
    # None when it is the derived default, so that equal models get equal configs from any loader
    return None if head_dim is None or head_dim == hidden_size // num_heads else int(head_dim)


def _draft_vocab_size(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ModelLoadError(f"config.json: {DRAFT_VOCAB_KEY} must be an integer, got {value!r}")


def _eos_token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(dict.fromkeys(int(v) for v in value))
