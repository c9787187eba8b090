"""Training a draft head (``models/draft_head.py``) on the target's own features: ``corral distill
--draft-head-for T``.

1. sample the target's replies to chat prompts (built-in ones, ``head_prompts.py``, or ``--teacher-prompts``)
   and hold out a share of the sequences; 2. run the float dense forward over them for the target's post-norm
   hidden states (``head_data.py``); 3. build the head over the ``head_size`` ids most frequent in the training
   sequences (special ids always in), its LM head rows the target's; 4. train it unrolled ``depth`` draft steps:
   step 1 reads the true feature ``h_t`` and token ``x_{t+1}``, step ``s + 1`` reads step ``s``'s predicted
   feature and the true next token, as the head drafts when serving (EAGLE's training-time unroll). Each step's
   loss is the forward KL from the target's distribution renormalised over the head's ids (temperature 1) to
   the head's, plus a smooth-L1 regression of the predicted feature to the true next one; 5. score acceptance on
   the held-out sequences (``head_eval.py``) and write the head with ``report.json``.

The run is deterministic for a seed (initialisation and row order come from seeded generators, given the same
torch thread count). There are no resumable checkpoints: the training is minutes where sampling dominates, and
an interrupted run starts again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from corral.compress.distill.config import DistillError
from corral.compress.distill.data import TeacherSampler, render_chat_prompts
from corral.compress.distill.draft import head_coverage, rank_head_ids
from corral.compress.distill.head_data import FeatureSet, sample_sequences, split_heldout, target_features
from corral.compress.distill.head_eval import HeadEvaluation, evaluate_head
from corral.compress.distill.head_prompts import builtin_user_messages
from corral.compress.distill.model import load_model
from corral.compress.distill.output import check_output_dir
from corral.compress.distill.trainer import WindowOrder, learning_rate_factor
from corral.loader import default_model_path, load_tokenizer
from corral.models.draft_head import DraftHead, DraftHeadConfig, save_draft_head

REPORT_FILE = "report.json"
ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class HeadTrainConfig:
    """The head's sizes and its training. ``steps`` None: ``epochs`` passes over the training rows, each row a
    window of ``depth`` draft steps."""

    head_size: int = 8192
    intermediate_size: int | None = None  # None: the target's
    depth: int = 3
    rows_per_step: int = 256
    epochs: float = 2.0
    steps: int | None = None
    learning_rate: float = 1e-3
    warmup_steps: int | None = None  # None: 5% of the steps, at least 1
    weight_decay: float = 0.0
    feature_loss_weight: float = 1.0  # of the smooth-L1 feature regression, beside the KL
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"head_size": self.head_size, "depth": self.depth, "rows_per_step": self.rows_per_step}
        if self.intermediate_size is not None:
            positive["intermediate_size"] = self.intermediate_size
        if self.steps is not None:
            positive["steps"] = self.steps
        for name, value in positive.items():
            if value < 1:
                raise DistillError(f"{name} must be >= 1, got {value}")
        if not self.epochs > 0 or self.learning_rate <= 0 or self.weight_decay < 0:
            raise DistillError("epochs and learning_rate must be > 0, weight_decay >= 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise DistillError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def num_steps(self, num_rows: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * num_rows / self.rows_per_step))

    def num_warmup_steps(self, num_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, num_steps // 20)


@dataclass(frozen=True)
class HeadStep:
    step: int  # 1-based
    num_steps: int
    loss: float
    rows_per_second: float


def init_draft_head(config: DraftHeadConfig, head_token_ids: torch.Tensor, target_rows: torch.Tensor,
                    seed: int) -> DraftHead:
    """A head that starts as the target's LM head (``target_rows`` ``[head_size, hidden]``, the target's rows of
    ``head_token_ids``) over the average of the feature and the token's embedding; the SwiGLU block starts as
    the identity (``down_proj`` zero) with ``nn.Linear``'s uniform init in gate and up."""
    head = DraftHead(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        eye = torch.eye(config.hidden_size)
        head.fc.weight.copy_(0.5 * torch.cat((eye, eye), dim=1))
        for layer in (head.gate_proj, head.up_proj):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
        head.down_proj.weight.zero_()
        head.lm_head.weight.copy_(target_rows)
    head.head_token_ids = head_token_ids.to(torch.int64).clone()
    return head


def unroll(head: DraftHead, embed: torch.Tensor, features: torch.Tensor,
           next_token_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(predicted features, head logits)`` of each draft step: step 1 reads ``features`` ``[rows, hidden]``,
    each later step the previous step's prediction; step ``s`` reads token ``next_token_ids[:, s - 1]``."""
    outputs = []
    for step in range(next_token_ids.shape[1]):
        features, logits = head(features, embed[next_token_ids[:, step]])
        outputs.append((features, logits))
    return outputs


def head_loss(head: DraftHead, embed: torch.Tensor, target_rows: torch.Tensor, data: FeatureSet,
              rows: torch.Tensor, depth: int, feature_loss_weight: float = 1.0) -> torch.Tensor:
    """The loss of the windows starting at ``rows``, summed over the ``depth`` draft steps (module docstring)."""
    positions = rows[:, None] + torch.arange(1, depth + 1)  # [rows, depth]
    loss = torch.zeros(())
    for step, (features, logits) in enumerate(unroll(head, embed, data.features[rows], data.token_ids[positions])):
        true_features = data.features[positions[:, step]]
        with torch.no_grad():
            target_logp = (true_features @ target_rows.T).log_softmax(-1)  # renormalised over the head's ids
        kl = (target_logp.exp() * (target_logp - logits.log_softmax(-1))).sum(-1).mean()
        loss = loss + kl + feature_loss_weight * F.smooth_l1_loss(features, true_features)
    return loss


def train_head(head: DraftHead, data: FeatureSet, embed: torch.Tensor, target_rows: torch.Tensor,
               config: HeadTrainConfig, on_step: Callable[[HeadStep], None] | None = None) -> list[float]:
    """AdamW (no decay on the norms' gains), linear warm-up then cosine decay to 0; the loss of each step."""
    rows = data.rows(config.depth)
    if len(rows) == 0:
        raise DistillError(f"no training window of {config.depth} draft steps: sample longer replies")
    num_steps = config.num_steps(len(rows))
    params = dict(head.named_parameters())
    groups = [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    warmup = config.num_warmup_steps(num_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, num_steps, warmup, 0.0))
    order = WindowOrder(len(rows), config.rows_per_step, config.seed)
    embed, target_rows = embed.detach(), target_rows.detach()
    head.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(num_steps):
        loss = head_loss(head, embed, target_rows, data, rows[order.batch(step)], config.depth,
                         config.feature_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            on_step(HeadStep(step + 1, num_steps, losses[-1], (step + 1) * config.rows_per_step / elapsed))
    head.eval()
    head.requires_grad_(False)
    return losses


@dataclass(frozen=True)
class HeadInputs:
    """What to train on. ``sample`` must draw at ``temperature`` and ``top_p``, which also score the head."""

    out: str
    target: str | None = None  # None: the default model
    user_messages: tuple[str, ...] = ()  # empty: the built-in prompts
    num_samples: int = 512
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    heldout_share: float = 0.1

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.max_new_tokens < 1:
            raise DistillError("--samples must be >= 2 and --sample-tokens >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 < self.heldout_share < 1:
            raise DistillError("need temperature >= 0, 0 < top_p <= 1 and 0 < held-out share < 1")


@dataclass(frozen=True)
class HeadReport:
    out: str
    head_size: int
    intermediate_size: int
    depth: int
    num_train_sequences: int
    num_heldout_sequences: int
    num_train_rows: int
    head_coverage: float  # share of the training sequences' tokens among the head's ids
    steps: int
    first_loss: float
    last_loss: float
    train_seconds: float
    heldout: HeadEvaluation

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_draft_head(inputs: HeadInputs, config: HeadTrainConfig, sample: TeacherSampler,
                     on_progress: ProgressFn | None = None,
                     on_step: Callable[[HeadStep], None] | None = None) -> HeadReport:
    """Sample, extract features, train and score a draft head for ``inputs.target``; write it to ``inputs.out``."""
    check_output_dir(inputs.out)
    progress = on_progress or (lambda phase, done, total: None)
    target_path = inputs.target if inputs.target is not None else default_model_path()
    tokenizer = load_tokenizer(target_path)
    target = load_model(target_path)
    if target.head_token_ids is not None:
        raise DistillError(f"{target_path} has a reduced LM head (a draft model): give the full target")
    if config.head_size > target.config.vocab_size:
        raise DistillError(f"--head-vocab {config.head_size} exceeds the vocabulary of {target.config.vocab_size} ids")
    if tokenizer.chat_template is None:
        raise DistillError(f"{target_path}: the target's tokenizer has no chat template to render prompts with")
    messages: Sequence[str] = inputs.user_messages or builtin_user_messages()
    prompts = render_chat_prompts(tokenizer, messages)
    longest = max(len(p) for p in prompts) + inputs.max_new_tokens
    if longest > target.config.max_position_embeddings:
        raise DistillError(f"a prompt plus --sample-tokens is {longest} tokens, beyond the target's context of "
                           f"{target.config.max_position_embeddings}")
    progress(f"sample {inputs.num_samples} replies", 0, 1)
    sequences = sample_sequences(prompts, inputs.num_samples, inputs.max_new_tokens, sample, config.seed)
    train_ids, heldout_ids = split_heldout(len(sequences.token_ids), inputs.heldout_share, config.seed)
    stop_ids = {*tokenizer.eos_token_ids, *target.config.eos_token_ids}
    forward = target.forward()
    train = target_features(forward, sequences.subset(train_ids), stop_ids,
                            lambda done, total: progress("target features", done, total))
    heldout = target_features(forward, sequences.subset(heldout_ids), stop_ids)
    train_tokens = sequences.subset(train_ids).flat_ids()
    special = set(tokenizer.all_special_ids) | stop_ids
    head_ids = rank_head_ids(train_tokens, target.config.vocab_size, config.head_size, special)
    embed = target.weights["model.embed_tokens.weight"]
    lm_head = target.weights.get("lm_head.weight", embed)
    head_config = DraftHeadConfig(target.config.hidden_size, config.intermediate_size or
                                  target.config.intermediate_size, config.head_size, target.config.vocab_size,
                                  target.config.rms_norm_eps)
    head = init_draft_head(head_config, head_ids, lm_head[head_ids], config.seed)
    start = time.perf_counter()
    losses = train_head(head, train, embed, lm_head[head_ids], config, on_step)
    seconds = time.perf_counter() - start
    progress("score the held-out sequences", 0, 1)
    evaluation = evaluate_head(head, heldout, embed, lm_head, config.depth, inputs.temperature, inputs.top_p)
    report = HeadReport(inputs.out, head_config.head_size, head_config.intermediate_size, config.depth,
                        len(train_ids), len(heldout_ids), len(train.rows(config.depth)),
                        head_coverage(train_tokens, head_ids), len(losses), losses[0], losses[-1], seconds, evaluation)
    save_draft_head(head, inputs.out)
    with open(os.path.join(inputs.out, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=2)
    return report
