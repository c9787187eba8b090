"""A draft model's reduced LM head (``ModelConfig.draft_vocab_size``): the checkpoint's ``lm_head.token_ids``, the
target id each head row scores, checked when it is loaded."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from corral.errors import ModelLoadError

HEAD_IDS = "lm_head.token_ids"


def checked_head_token_ids(weights: Mapping[str, torch.Tensor], size: int, vocab_size: int) -> torch.Tensor:
    """The ``size`` head ids as int64; ModelLoadError (one line) when missing, of the wrong shape or type,
    outside the vocabulary, or repeated."""
    if HEAD_IDS not in weights:
        raise ModelLoadError(f"checkpoint is missing tensor {HEAD_IDS!r} (its config has a reduced LM head)")
    ids = weights[HEAD_IDS]
    if tuple(ids.shape) != (size,) or ids.is_floating_point():
        raise ModelLoadError(f"tensor {HEAD_IDS!r} must be {size} integer token ids")
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ModelLoadError(f"tensor {HEAD_IDS!r} holds ids outside the vocabulary of {vocab_size}")
    if ids.unique().numel() != ids.numel():
        raise ModelLoadError(f"tensor {HEAD_IDS!r} repeats a token id")
    return ids
