"""The distilled student as a plain HF Llama directory: ``config.json`` + ``model.safetensors`` (float32) + the
student's tokenizer files, written beside the target and renamed, so the target never holds half a model."""

from __future__ import annotations

import os
import shutil
import tempfile

from corral.compress.distill.config import DistillError
from corral.compress.distill.model import DenseModel
from corral.loader import save_hf_dir
from corral.text.tokenizer import Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def check_output_dir(out: str) -> None:
    if os.path.exists(out):
        raise DistillError(f"--out {out} already exists: choose a new output directory")


def write_student(out: str, student: DenseModel, tokenizer_source: str | Tokenizer) -> None:
    """Write ``student`` with the tokenizer files of the directory ``tokenizer_source`` (or that tokenizer)."""
    check_output_dir(out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".distill-", dir=parent)
    try:
        save_hf_dir(staging, student.config, student.state_dict())
        if isinstance(tokenizer_source, Tokenizer):
            tokenizer_source.save_pretrained(staging)
        for name in () if isinstance(tokenizer_source, Tokenizer) else TOKENIZER_FILES:
            source = os.path.join(tokenizer_source, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(staging, name))
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
