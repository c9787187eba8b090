"""The training loop: AdamW on every student tensor, linear warm-up then cosine decay, gradient accumulation,
gradient clipping, and checkpoints from which a resumed run continues bit for bit.

The window order is a function of the seed alone (a fresh permutation of the training windows per epoch), so
the data position is the number of optimizer steps taken; nothing else in a step is random.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from corral.compress.distill.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from corral.compress.distill.config import DistillConfig, training_dtype
from corral.compress.distill.loss import distillation_loss
from corral.compress.distill.model import DenseModel, matmul_dtype
from corral.compress.distill.teacher import TeacherTargets

# fields that do not change what a step computes: a resumed run may change them
_RESUMABLE_FIELDS = ("steps", "checkpoint_every")


@dataclass(frozen=True)
class StepReport:
    step: int  # optimizer steps taken, this one included
    num_steps: int
    loss: float  # mean over the step's micro-batches, before its update
    learning_rate: float  # the one this step used
    tokens_seen: int
    tokens_per_second: float  # this step's


@dataclass
class TrainResult:
    steps_taken: int  # in total, across resumed runs
    num_steps: int
    tokens_seen: int
    step_losses: list[float]
    seconds: float  # this process's training time
    finished: bool  # False: stopped early (stop_after), a checkpoint holds the state


class WindowOrder:
    """Micro-batch ``g`` is windows ``[g*B, (g+1)*B)`` of the endless sequence of per-epoch permutations."""

    def __init__(self, num_windows: int, batch_size: int, seed: int):
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self._permutations: dict[int, torch.Tensor] = {}

    def batch(self, micro_batch: int) -> torch.Tensor:
        positions = range(micro_batch * self.batch_size, (micro_batch + 1) * self.batch_size)
        return torch.stack([self._permutation(p // self.num_windows)[p % self.num_windows] for p in positions])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {epoch: torch.randperm(self.num_windows, generator=generator)}
        return self._permutations[epoch]


def learning_rate_factor(step: int, num_steps: int, num_warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over ``num_warmup_steps`` to 1, then a cosine from 1 to ``min_ratio`` at the last step."""
    if step < num_warmup_steps:
        return (step + 1) / num_warmup_steps
    decay_steps = max(1, num_steps - num_warmup_steps - 1)
    progress = min(1.0, (step - num_warmup_steps) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(student: DenseModel, config: DistillConfig) -> torch.optim.AdamW:
    """AdamW in name order; no weight decay on norms (1-D gains whose scale is not a capacity to restrain)."""
    names = sorted(student.weights)
    decayed = [student.weights[n] for n in names if student.weights[n].dim() >= 2]
    plain = [student.weights[n] for n in names if student.weights[n].dim() < 2]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def trajectory_fingerprint(config: DistillConfig, num_steps: int) -> dict[str, Any]:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_FIELDS}
    return {**fields, "num_steps": num_steps}


def train(
    student: DenseModel,
    train_ids: torch.Tensor,
    teacher: TeacherTargets,
    config: DistillConfig,
    work_dir: str,
    run_fingerprint: dict[str, Any],
    resume: bool = False,
    stop_after: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    """Train ``student`` in place on ``train_ids`` ``[num_windows, tokens]`` toward ``teacher``; checkpoints go to
    ``work_dir``. ``resume`` continues from its checkpoint; ``stop_after`` stops (with a checkpoint) once that
    many optimizer steps are taken in total."""
    num_steps = config.num_steps(len(train_ids))
    fingerprint = {**run_fingerprint, **trajectory_fingerprint(config, num_steps)}
    dtype = training_dtype(config.dtype)
    optimizer = build_optimizer(student, config)
    warmup = config.num_warmup_steps(num_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, num_steps, warmup, config.min_learning_rate_ratio))
    step, tokens_seen, step_losses = 0, 0, []
    if resume:
        state = load_checkpoint(work_dir, fingerprint)
        with torch.no_grad():
            for name, tensor in state.weights.items():
                student.weights[name].copy_(tensor)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        torch.set_rng_state(state.rng_state)
        step, tokens_seen, step_losses = state.step, state.tokens_seen, state.step_losses
    else:
        torch.manual_seed(config.seed)
    order = WindowOrder(len(train_ids), config.sequences_per_step, config.seed)
    last = num_steps if stop_after is None else min(num_steps, stop_after)
    parameters = [student.weights[n] for n in sorted(student.weights)]
    started = time.perf_counter()
    while step < last:
        step_started = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        total = 0.0
        for micro in range(config.grad_accum_steps):
            indices = order.batch(step * config.grad_accum_steps + micro)
            input_ids = train_ids[indices]
            targets = teacher.targets(indices, input_ids)
            with matmul_dtype(dtype):
                logits = student.forward()(input_ids)
            loss = distillation_loss(logits, targets, input_ids, config.temperature, config.ce_weight)
            (loss / config.grad_accum_steps).backward()
            total += loss.item()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        tokens_seen += config.tokens_per_step
        step_losses.append(total / config.grad_accum_steps)
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == last:
            save_checkpoint(work_dir, TrainingState(step, tokens_seen, student.weights, optimizer.state_dict(),
                                                    scheduler.state_dict(), torch.get_rng_state(), step_losses),
                            fingerprint)
        if on_step is not None:
            seconds = time.perf_counter() - step_started
            on_step(StepReport(step, num_steps, step_losses[-1], learning_rate, tokens_seen,
                               config.tokens_per_step / seconds))
    return TrainResult(step, num_steps, tokens_seen, step_losses, time.perf_counter() - started, step >= num_steps)
