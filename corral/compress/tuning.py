"""End-to-end tuning of int4 groups' scales and mins, with their codes fixed (after EfficientQAT's E2E-QP).

Layer-wise methods (AWQ, GPTQ) fit each linear to its own inputs; their errors still add up through the
model. This stage trains only the float16 scale and min of every int4 group, a few parameters per 64
weights, to bring the quantized model's next-token distribution back to the float model's: the loss is the
KL divergence from the float model to the quantized one on calibration text, minimized by Adam. A scale is
trained as ``scale * exp(a)`` and a min as ``min + scale * b`` (``a = b = 0`` at the start), so one learning
rate suits groups of every magnitude. The codes, and so the packed size, do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from corral.compress.dense_forward import DenseForward, float_linears
from corral.config import DEFAULT_TUNE_STEPS
from corral.kernels.block_linear import unpack_int4
from corral.models.spec import ModelConfig
from corral.quantization.blockwise import BlockQuantized

LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class TuningConfig:
    steps: int = DEFAULT_TUNE_STEPS
    learning_rate: float = 1e-3
    num_tokens: int = 32768  # of the calibration text's train split
    sequence_length: int = 256
    sequences_per_step: int = 4
    seed: int = 0


DEFAULT_TUNING = TuningConfig()


@dataclass
class TuningReport:
    steps: int
    kl_before: float  # mean KL on the first four steps' worth of calibration sequences, before and after
    kl_after: float
    step_losses: list[float]  # each step's batch KL, before its update


class TunableGroups(nn.Module):
    """One int4 matrix as ``codes * scale + min`` per group, with trainable scale and min offsets."""

    def __init__(self, blocks: BlockQuantized):
        super().__init__()
        self.group_size = blocks.group_size
        self.register_buffer("codes", unpack_int4(blocks.values).float())
        self.register_buffer("scales", blocks.scales.float())
        self.register_buffer("mins", blocks.mins.float())
        self.log_scale = nn.Parameter(torch.zeros_like(self.scales))
        self.min_shift = nn.Parameter(torch.zeros_like(self.scales))

    def tuned(self) -> tuple[torch.Tensor, torch.Tensor]:  # float32 scales, mins
        return self.scales * self.log_scale.exp(), self.mins + self.scales * self.min_shift

    def weight(self) -> torch.Tensor:
        scales, mins = self.tuned()
        rows, cols = self.codes.shape
        grouped = self.codes.view(rows, cols // self.group_size, self.group_size)
        return (grouped * scales.unsqueeze(2) + mins.unsqueeze(2)).view(rows, cols)

    def blocks(self, values: torch.Tensor) -> BlockQuantized:
        """The tuned groups as blocks over the original packed ``values``."""
        scales, mins = (t.detach().half() for t in self.tuned())
        return BlockQuantized(4, self.group_size, values, scales, mins)


def tune_group_parameters(
    config: ModelConfig,
    reference: Mapping[str, torch.Tensor],
    state: MutableMapping[str, torch.Tensor | BlockQuantized],
    token_sequences: torch.Tensor,
    tuning: TuningConfig = DEFAULT_TUNING,
    on_step: Callable[[int, int], None] | None = None,
) -> TuningReport:
    """Tune, in place, the scales and mins of every int4 decoder linear in ``state`` (HF names; embedding,
    norms and other tensors stay fixed) toward the float model ``reference`` on ``token_sequences``
    ``[num_sequences, tokens]``."""
    groups = nn.ModuleDict({
        _key(index, name): TunableGroups(blocks)
        for index in range(config.num_hidden_layers)
        for name in LINEAR_NAMES
        if isinstance(blocks := state[f"model.layers.{index}.{name}.weight"], BlockQuantized) and blocks.bits == 4
    })
    tuned_names = {_state_name(key) for key in groups}
    fixed = {name: t.dequantize() if isinstance(t, BlockQuantized) else t.float() for name, t in state.items()
             if name not in tuned_names}
    reference_linear = float_linears(reference)

    def quantized_linear(index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        key, prefix = _key(index, name), f"model.layers.{index}.{name}"
        weight = groups[key].weight() if key in groups else fixed[prefix + ".weight"]
        return F.linear(x, weight, fixed.get(prefix + ".bias"))

    teacher = DenseForward(config, reference, reference_linear)
    student = DenseForward(config, fixed, quantized_linear)

    def kl(input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(teacher(input_ids), dim=-1)
        predicted = F.log_softmax(student(input_ids), dim=-1)
        return F.kl_div(predicted, target, log_target=True, reduction="none").sum(-1).mean()

    def mean_kl() -> float:
        with torch.no_grad():
            parts = token_sequences[: 4 * tuning.sequences_per_step].split(tuning.sequences_per_step)
            return sum(kl(part).item() for part in parts) / len(parts)

    kl_before = mean_kl()
    generator = torch.Generator().manual_seed(tuning.seed)
    optimizer = torch.optim.Adam(groups.parameters(), lr=tuning.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, tuning.steps))
    step_losses = []
    for step in range(tuning.steps):
        batch = torch.randint(0, len(token_sequences), (tuning.sequences_per_step,), generator=generator)
        loss = kl(token_sequences[batch])
        step_losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step + 1, tuning.steps)
    for key, tunable in groups.items():
        name = _state_name(key)
        state[name] = tunable.blocks(state[name].values)
    return TuningReport(tuning.steps, kl_before, mean_kl(), step_losses)


def _key(index: int, name: str) -> str:  # ModuleDict keys may not contain dots
    return f"{index}:{name.replace('.', ':')}"


def _state_name(key: str) -> str:
    index, rest = key.split(":", 1)
    return f"model.layers.{index}.{rest.replace(':', '.')}.weight"
