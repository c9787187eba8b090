"""Checkpoint loading: a GGUF file or an HF directory -> (ModelConfig, state dict under HF Llama names);
``load_tokenizer`` finds the tokenizer stored beside the weights.
"""

from __future__ import annotations

import os

import torch

from corral.errors import ModelLoadError
from corral.loader.default_model import default_model_path
from corral.loader.gguf import load_gguf, open_gguf, read_gguf_config
from corral.loader.gguf_file import GGUFFile, read_gguf_file
from corral.loader.lazy import LazyWeights
from corral.loader.packed import PackedFormat
from corral.loader.safetensors import load_hf_dir, open_hf_dir, save_hf_dir, stored_packed_format
from corral.loader.tokenizer import load_tokenizer
from corral.models.spec import ModelConfig

__all__ = [
    "GGUFFile",
    "LazyWeights",
    "PackedFormat",
    "default_model_path",
    "load_checkpoint",
    "load_gguf",
    "load_hf_dir",
    "load_tokenizer",
    "open_checkpoint",
    "open_gguf",
    "open_hf_dir",
    "read_gguf_config",
    "read_gguf_file",
    "save_hf_dir",
    "stored_packed_format",
]


def load_checkpoint(
    path: str | os.PathLike[str] | None, dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Load the model at ``path``: None -> the default model, a ``.gguf`` file, or an HF directory."""
    config, weights = open_checkpoint(path, dtype)
    return config, weights.materialize()


def open_checkpoint(
    path: str | os.PathLike[str] | None, dtype: torch.dtype = torch.float32, keep_quantized: bool = False
) -> tuple[ModelConfig, LazyWeights]:
    """Like ``load_checkpoint``, but each weight is read and converted when it is accessed; with
    ``keep_quantized``, a GGUF file's Q4_0/Q4_1/Q8_0 matrices and the packed weights of a ``corral quantize``
    directory come back packed (``BlockQuantized``)."""
    if path is None:
        path = default_model_path()
    path = os.fspath(path)
    if os.path.isfile(path) and path.lower().endswith(".gguf"):
        return open_gguf(path, dtype, keep_quantized)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return open_hf_dir(path, dtype, keep_quantized)
    if not os.path.exists(path):
        raise ModelLoadError(f"model path does not exist: {path}")
    raise ModelLoadError(f"not a model: {path} (expected a .gguf file or a directory with config.json)")
