"""The training loop on tiny random models: the loss falls on a fixed batch; a run stopped and resumed from its
checkpoint ends bit-identical to an uninterrupted one; a checkpoint of another run is refused; the learning rate
warms up linearly and decays along a cosine."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from corral.compress.distill.config import DistillConfig, DistillError
from corral.compress.distill.model import DenseModel
from corral.compress.distill.teacher import OnlineTeacher, cache_topk
from corral.compress.distill.trainer import learning_rate_factor, train
from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig

TEACHER_CONFIG = ModelConfig(
    architecture="llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=True,
)
STUDENT_CONFIG = ModelConfig(**{**TEACHER_CONFIG.__dict__, "num_hidden_layers": 1})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(config: ModelConfig, seed: int, trainable: bool) -> DenseModel:
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        tensor = 1 + 0.1 * noise if "norm" in name else noise * shape[-1] ** -0.5 * (3 if "embed" in name else 1)
        weights[name] = nn.Parameter(tensor) if trainable else tensor
    return DenseModel(config, weights)


def _windows(num_windows: int, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 96, (num_windows, length), generator=torch.Generator().manual_seed(1))


def test_the_loss_falls_on_a_fixed_batch(tmp_path):
    teacher, student = _model(TEACHER_CONFIG, 0, False), _model(STUDENT_CONFIG, 1, True)
    windows = _windows(2)  # both windows in every step: the same batch each time
    config = DistillConfig(steps=12, sequence_length=16, sequences_per_step=2, grad_accum_steps=1,
                           learning_rate=1e-2, warmup_steps=1, top_k=0, dtype="float32", checkpoint_every=0)
    result = train(student, windows, OnlineTeacher(teacher, torch.float32), config, str(tmp_path), {})
    assert result.finished and result.steps_taken == 12
    assert result.step_losses[-1] < 0.5 * result.step_losses[0], result.step_losses


def _run(work_dir: str, config: DistillConfig, resume: bool = False, stop_after: int | None = None):
    teacher, student = _model(TEACHER_CONFIG, 0, False), _model(STUDENT_CONFIG, 1, True)
    windows = _windows(5)  # 5 windows, 2 per micro-batch: batches straddle epochs
    cache = cache_topk(teacher, windows, 8, config.temperature, 2, torch.float32)
    result = train(student, windows, cache, config, work_dir, {"run": "test"}, resume, stop_after)
    return student, result


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = DistillConfig(steps=6, sequence_length=16, sequences_per_step=2, grad_accum_steps=2,
                           learning_rate=3e-3, warmup_steps=2, top_k=8, dtype="float32", checkpoint_every=2,
                           ce_weight=0.1)
    whole, whole_result = _run(str(tmp_path / "whole"), config)
    _, first = _run(str(tmp_path / "split"), config, stop_after=3)  # the checkpoint of step 3, then a "crash"
    assert not first.finished and first.steps_taken == 3
    resumed, resumed_result = _run(str(tmp_path / "split"), config, resume=True)
    assert resumed_result.finished and resumed_result.steps_taken == 6
    assert resumed_result.step_losses == whole_result.step_losses
    for name, weight in whole.weights.items():
        assert torch.equal(resumed.weights[name], weight), name
    start = _model(STUDENT_CONFIG, 1, False)  # and the run did move the weights
    assert not torch.equal(whole.weights["model.layers.0.mlp.up_proj.weight"], start.weights["model.layers.0.mlp.up_proj.weight"])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    config = DistillConfig(steps=2, sequence_length=16, sequences_per_step=2, grad_accum_steps=1, top_k=8,
                           dtype="float32")
    _run(str(tmp_path), config, stop_after=1)
    with pytest.raises(DistillError, match="learning_rate"):
        _run(str(tmp_path), DistillConfig(**{**config.__dict__, "learning_rate": 1e-3}), resume=True)
    with pytest.raises(DistillError, match="no checkpoint"):
        _run(str(tmp_path / "empty"), config, resume=True)


def test_warmup_is_linear_and_the_cosine_ends_at_the_minimum():
    factors = [learning_rate_factor(step, 10, 2, 0.1) for step in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))
    midpoint = learning_rate_factor(2 + 7 // 2, 10, 2, 0.0)
    assert midpoint == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 7)))
