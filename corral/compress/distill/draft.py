"""A draft model for speculative decoding (``corral distill --draft-for T``): the target cut to its most
influential layers, with an LM head over only the most frequent tokens.

Why a reduced head: in the default Q4_1 file the Q8_0 output head is about 31% of the weight bytes, so a draft
with the full 49152-row head never costs less than about a third of a target step, however few layers it keeps.
Ranked by frequency (FR-Spec, Zhao et al. 2025), the top few thousand ids cover most tokens the target writes;
the draft proposes only those, and the rejection sampler still emits the target's exact distribution (the
draft's probability of every other id is 0).

Which ids: the most frequent in the run's training windows, local text and the target's own samples alike,
with the tokenizer's special ids (end of turn, end of text) always in. Which layers: ShortGPT's block
influence (``compress.prune``) measured on the first training windows; the kept layers stay in order, with the
embedding, final norm and head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from corral.compress.distill.config import DistillError
from corral.compress.distill.model import DenseModel
from corral.compress.prune.importance import compute_importance
from corral.models.spec import ModelConfig

_IMPORTANCE_WINDOWS = 8  # training windows the layer choice is measured on


@dataclass(frozen=True)
class DraftOptions:
    """What the draft keeps: ``num_layers`` of the target's layers (None: a ``--student`` gives the layers) and a
    head over its ``vocab_size`` most frequent ids."""

    vocab_size: int = 8192
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise DistillError(f"--draft-vocab must be >= 1, got {self.vocab_size}")
        if self.num_layers is not None and self.num_layers < 1:
            raise DistillError(f"--layers must be >= 1, got {self.num_layers}")

    def check(self, target: ModelConfig) -> None:
        """Refuse a draft larger than its target."""
        if self.vocab_size > target.vocab_size:
            raise DistillError(f"--draft-vocab {self.vocab_size} exceeds the vocabulary of {target.vocab_size} ids")
        if self.num_layers is not None and self.num_layers > target.num_hidden_layers:
            raise DistillError(f"--layers {self.num_layers} exceeds the target's {target.num_hidden_layers} layers")


def rank_head_ids(windows: torch.Tensor, vocab_size: int, head_size: int, always: Iterable[int]) -> torch.Tensor:
    """The ``head_size`` ids most frequent in ``windows`` (ties: lower id first), ``always`` included (they
    displace the least frequent), most frequent first: ``[head_size]`` int64."""
    if head_size > vocab_size:
        raise DistillError(f"--draft-vocab {head_size} exceeds the vocabulary of {vocab_size} ids")
    counts = torch.bincount(windows.reshape(-1), minlength=vocab_size).double()
    forced = sorted({int(i) for i in always if 0 <= int(i) < vocab_size})[:head_size]
    # forced ids rank above every counted one; stable sort keeps equal counts in id order
    counts[forced] = float(windows.numel() + 1)
    return counts.argsort(descending=True, stable=True)[:head_size]


def head_coverage(windows: torch.Tensor, head_ids: torch.Tensor) -> float:
    """The share of the tokens of ``windows`` that are among ``head_ids``."""
    return float(torch.isin(windows, head_ids).float().mean())


def choose_layers(teacher: DenseModel, windows: torch.Tensor, num_layers: int) -> list[int]:
    """The ``num_layers`` layers of highest block influence on the first training windows, in order."""
    total = teacher.config.num_hidden_layers
    if num_layers > total:
        raise DistillError(f"--layers {num_layers} exceeds the target's {total} layers")
    with torch.no_grad():
        scores = compute_importance(teacher.config, teacher.weights, windows[:_IMPORTANCE_WINDOWS])
    return sorted(scores.layers.topk(num_layers).indices.tolist())


def cut_target(teacher: DenseModel, layers: list[int], head_ids: torch.Tensor) -> DenseModel:
    """A trainable copy of ``teacher`` with only ``layers`` (renumbered in order) and a head over ``head_ids``."""
    renumbered = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(layers)}
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in teacher.weights.items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in renumbered:
                continue
            name = renumbered[prefix] + name[len(prefix):]
        weights[name] = tensor.detach().clone()
    config = replace(teacher.config, num_hidden_layers=len(layers))
    return with_head(DenseModel(config, weights), head_ids, trainable=True)


def with_head(model: DenseModel, head_ids: torch.Tensor, trainable: bool = False) -> DenseModel:
    """``model`` scoring only ``head_ids``: an untied head keeps just those rows; a tied one reads the
    embedding's rows at each forward (``DenseModel.forward``). The teacher's view shares its tensors."""
    if model.head_token_ids is not None:
        if not torch.equal(model.head_token_ids, head_ids):
            raise DistillError("the student's reduced head lists other token ids than this run ranked")
        return model
    weights = dict(model.weights)
    if "lm_head.weight" in weights:
        weights["lm_head.weight"] = weights["lm_head.weight"].detach()[head_ids].clone()
    if trainable:
        weights = {name: t if isinstance(t, nn.Parameter) else nn.Parameter(t) for name, t in weights.items()}
    config = replace(model.config, draft_vocab_size=len(head_ids))
    return DenseModel(config, weights, head_ids.clone())
