"""Teacher and student as HF-named float32 tensors run by ``DenseForward``, in the run's matmul dtype."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from corral.compress.dense_forward import DenseForward, float_linears
from corral.compress.distill.config import DistillError
from corral.loader import load_tokenizer, open_checkpoint
from corral.models.spec import ModelConfig
from corral.text.tokenizer import Tokenizer

HEAD_TOKEN_IDS = "lm_head.token_ids"  # a reduced head's ids, in the checkpoint (models/llama.py)
# a probe the two tokenizers must split identically (code, prose, whitespace runs, non-ASCII)
_TOKENIZER_PROBE = "def distill(teacher):\n    return 'Kullback–Leibler' + str(1e-4)  # über ✓\n\n\tEnd."


@dataclass
class DenseModel:
    """A model's config and float32 weights under HF names; trainable ones are ``nn.Parameter``. With
    ``head_token_ids`` (a draft's reduced head) its logits cover only those ids, in that order: an untied
    ``lm_head.weight`` holds just their rows, a tied head is the embedding's rows of them."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    head_token_ids: torch.Tensor | None = None  # [head_size] int64

    def forward(self) -> DenseForward:
        weights = self.weights
        if self.head_token_ids is not None and "lm_head.weight" not in weights:
            # indexed at every forward, so the head's gradient reaches the tied embedding
            weights = {**weights, "lm_head.weight": weights["model.embed_tokens.weight"][self.head_token_ids]}
        return DenseForward(self.config, weights, float_linears(self.weights))

    def logits(self, input_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Logits ``[batch, tokens, head size]`` (the vocabulary unless the head is reduced) with the matrix
        products in ``dtype``."""
        with matmul_dtype(dtype):
            return self.forward()(input_ids)

    def head_columns(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Each token id's column in the logits, -100 (cross-entropy's ignore index) for ids the head lacks."""
        if self.head_token_ids is None:
            return token_ids
        column_of = torch.full((self.config.vocab_size,), -100, dtype=torch.int64)
        column_of[self.head_token_ids] = torch.arange(len(self.head_token_ids))
        return column_of[token_ids]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a checkpoint stores them (a reduced head's token ids included)."""
        state = {name: t.detach() for name, t in self.weights.items()}
        if self.head_token_ids is not None:
            state[HEAD_TOKEN_IDS] = self.head_token_ids
        return state


def load_model(path: str | None, trainable: bool = False) -> DenseModel:
    """The float32 model at ``path`` (None: the default model, dequantized); with ``trainable`` every tensor
    is a parameter. ``open_checkpoint`` checks every name and shape against the config."""
    config, lazy = open_checkpoint(path, torch.float32)
    weights = lazy.materialize()
    head_token_ids = weights.pop(HEAD_TOKEN_IDS, None)
    if trainable:
        weights = {name: nn.Parameter(tensor) for name, tensor in weights.items()}
    return DenseModel(config, weights, head_token_ids)


def check_student_dir(path: str) -> None:
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise DistillError(f"--student {path}: not an HF model directory (config.json + *.safetensors)")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise DistillError(f"--student {path}: no tokenizer.json (the distilled directory copies the student's)")


def check_compatible(teacher: ModelConfig, student: ModelConfig, teacher_tokenizer: Tokenizer,
                     student_tokenizer: Tokenizer) -> None:
    """Refuse a pair whose next-token distributions are not over the same ids."""
    if teacher.vocab_size != student.vocab_size:
        raise DistillError(f"teacher and student vocabularies differ: {teacher.vocab_size} != {student.vocab_size} "
                           "ids (distillation compares distributions over the same token ids)")
    if teacher_tokenizer.encode(_TOKENIZER_PROBE) != student_tokenizer.encode(_TOKENIZER_PROBE):
        raise DistillError("teacher and student tokenizers split text differently: they must be the same tokenizer")


def load_tokenizers(teacher: str | None, student: str) -> tuple[Tokenizer, Tokenizer]:
    return load_tokenizer(teacher), load_tokenizer(student)


@contextlib.contextmanager
def matmul_dtype(dtype: torch.dtype) -> Iterator[None]:
    """bf16 through autocast (float32 weights, optimizer and loss; bf16 products), float32 as is."""
    if dtype == torch.bfloat16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield
