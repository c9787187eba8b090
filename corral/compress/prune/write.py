"""Write a pruned model as a plain HF Llama directory: ``config.json``, ``model.safetensors``, the tokenizer
files, and ``prune.json`` (what was kept and why), staged beside the target and renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping

import torch

from corral.loader import save_hf_dir
from corral.models.spec import ModelConfig
from corral.text.tokenizer import Tokenizer


def write_pruned_dir(
    out: str,
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    tokenizer: Tokenizer,
    record: Mapping[str, object],
) -> None:
    """Create ``out`` (which must not exist) holding ``weights`` cast to ``dtype``; ``out`` never holds half
    a checkpoint: the directory is written to a staging name and renamed, which fails if ``out`` appeared."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
    try:
        save_hf_dir(staging, config, {name: tensor.to(dtype) for name, tensor in weights.items()})
        _set_torch_dtype(os.path.join(staging, "config.json"), dtype)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, "prune.json"), "w", encoding="utf-8") as file:
            json.dump(record, file, indent=1)
            file.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging, not for the checkpoint
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _set_torch_dtype(config_path: str, dtype: torch.dtype) -> None:
    # save_hf_dir records float32; HF transformers reads this key to pick the dtype it loads in
    with open(config_path, encoding="utf-8") as file:
        raw = json.load(file)
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump(raw, file, indent=2, sort_keys=True)
