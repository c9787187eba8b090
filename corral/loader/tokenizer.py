"""The tokenizer of a checkpoint: from a GGUF file's metadata or an HF directory's ``tokenizer.json``."""

from __future__ import annotations

import os

from corral.errors import ModelLoadError
from corral.loader.default_model import default_model_path
from corral.text.tokenizer import Tokenizer


def load_tokenizer(model: str | os.PathLike[str] | None) -> Tokenizer:
    """The tokenizer stored with ``model`` (None: the default model)."""
    path = os.fspath(model) if model is not None else default_model_path()
    if os.path.isdir(path):
        return Tokenizer.from_pretrained_dir(path)
    if path.endswith(".gguf"):
        return Tokenizer.from_gguf(path)
    raise ModelLoadError(f"cannot find a tokenizer for {path!r}")
