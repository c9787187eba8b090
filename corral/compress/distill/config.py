"""What a distillation run is asked to do, validated once; and the training dtype the host runs fastest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.errors import ConfigError
from corral.platform import cpu_flags

TRAINING_DTYPES = ("auto", "float32", "bfloat16")
# CPU flags with native bf16 dot products. Without them (AVX2 hosts: Zen 1-3, Intel before Cooper Lake) bf16 matrix
# products are emulated: on a Zen 3 host a training step took 9x as long in bf16 as in fp32 (docs/distillation.md).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class DistillError(ConfigError):
    """A distillation input is unusable: mismatched vocabularies, a missing directory, a checkpoint of another run."""


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of one run. ``steps`` counts optimizer steps, each over
    ``sequences_per_step * grad_accum_steps`` windows of ``sequence_length`` tokens; None: one pass over the
    training windows. ``top_k`` > 0 caches the teacher's top-k log-probabilities (and the tail mass) once,
    before training, so the teacher is not in memory while the student trains; 0 runs the teacher beside the
    student on every batch and distils the full distribution."""

    steps: int | None = None
    sequence_length: int = 256
    sequences_per_step: int = 2  # per micro-batch
    grad_accum_steps: int = 4
    learning_rate: float = 2e-4
    min_learning_rate_ratio: float = 0.1  # the cosine ends at learning_rate * this
    warmup_steps: int | None = None  # None: 5% of the steps, at least 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0: no clipping
    temperature: float = 1.0
    ce_weight: float = 0.0  # weight of the cross-entropy on the text's next tokens, beside the KL
    top_k: int = 64
    checkpoint_every: int = 50  # optimizer steps; 0: only the final state
    seed: int = 0
    dtype: str = "auto"

    def __post_init__(self) -> None:
        positive = {"sequence_length": self.sequence_length, "sequences_per_step": self.sequences_per_step,
                    "grad_accum_steps": self.grad_accum_steps}
        for name, value in positive.items():
            if value < 1:
                raise DistillError(f"{name} must be >= 1, got {value}")
        if self.sequence_length < 2:
            raise DistillError(f"sequence_length must be >= 2, got {self.sequence_length}")
        if self.steps is not None and self.steps < 1:
            raise DistillError(f"steps must be >= 1, got {self.steps}")
        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate_ratio <= 1:
            raise DistillError("learning_rate must be > 0 and min_learning_rate_ratio in [0, 1]")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise DistillError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.ce_weight < 0:
            raise DistillError("weight_decay, max_grad_norm and ce_weight must be >= 0")
        if self.temperature <= 0:
            raise DistillError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or self.checkpoint_every < 0:
            raise DistillError("top_k and checkpoint_every must be >= 0")
        if self.dtype not in TRAINING_DTYPES:
            raise DistillError(f"dtype must be one of {', '.join(TRAINING_DTYPES)}, got {self.dtype!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.grad_accum_steps * self.sequence_length

    def num_steps(self, num_windows: int) -> int:
        """Optimizer steps of the run over ``num_windows`` training windows."""
        if self.steps is not None:
            return self.steps
        return max(1, num_windows // (self.sequences_per_step * self.grad_accum_steps))

    def num_warmup_steps(self, num_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, num_steps // 20)


def training_dtype(name: str = "auto") -> torch.dtype:
    """The dtype the matrix products run in (weights and optimizer stay float32: bf16 runs under autocast).
    auto: bfloat16 where the CPU has native bf16 dot products, else float32."""
    if name == "auto":
        return torch.bfloat16 if cpu_flags() & _BF16_FLAGS else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32
