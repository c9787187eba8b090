"""The distillation loss: top-k targets with the tail bucket give the full KL when k covers the vocabulary and
never more than it otherwise; the full KL is zero at the teacher and positive elsewhere; the CE term adds."""

from __future__ import annotations

import pytest
import torch

from corral.compress.distill.loss import (
    distillation_loss,
    forward_kl,
    next_token_cross_entropy,
    topk_forward_kl,
    topk_targets,
)

VOCAB = 96


def _logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(2, 5, VOCAB, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_with_k_equal_to_the_vocabulary_is_the_full_kl_and_its_gradient(temperature):
    teacher, student = _logits(0), _logits(1).requires_grad_()
    full = forward_kl(student, teacher, temperature)
    (full_grad,) = torch.autograd.grad(full, student)
    topk = topk_forward_kl(student, topk_targets(teacher, VOCAB, temperature), temperature)
    (topk_grad,) = torch.autograd.grad(topk, student)
    torch.testing.assert_close(topk, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(topk_grad, full_grad, rtol=1e-4, atol=1e-7)
    assert torch.isfinite(topk_grad).all()


def test_topk_kl_is_a_lower_bound_that_tightens_with_k():
    teacher, student = _logits(2), _logits(3)
    full = forward_kl(student, teacher).item()
    values = [topk_forward_kl(student, topk_targets(teacher, k)).item() for k in (1, 8, 32, VOCAB)]
    assert all(0 <= v <= full + 1e-5 for v in values)
    assert values == sorted(values)  # a finer partition never has a smaller KL
    assert values[0] < 0.9 * full  # and the bound is not trivially tight: the tail matters


def test_the_tail_bucket_counts_mass_the_student_moves_into_or_out_of_the_topk():
    """A student that copies the teacher on the top-k ids but moves mass between them and the rest is penalized
    both ways; without the tail bucket, piling mass onto the top-k would score below zero."""
    teacher = _logits(4)
    targets = topk_targets(teacher, 4)
    top = torch.zeros_like(teacher, dtype=torch.bool).scatter_(-1, targets.token_ids, True)
    into_topk = torch.where(top, teacher, teacher - 5.0)
    out_of_topk = torch.where(top, teacher - 5.0, teacher)
    for student in (into_topk, out_of_topk):
        kl = topk_forward_kl(student, targets)
        assert 0.05 < kl <= forward_kl(student, teacher) + 1e-5
    assert topk_forward_kl(teacher, targets).abs() < 1e-6


def test_kl_is_zero_at_the_teacher_and_the_ce_term_adds():
    teacher = _logits(5)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(6))
    assert forward_kl(teacher, teacher).abs() < 1e-6
    assert forward_kl(_logits(7), teacher) > 0.1
    student = _logits(8)
    ce = next_token_cross_entropy(student, ids)
    torch.testing.assert_close(distillation_loss(student, teacher, ids, ce_weight=0.25),
                               forward_kl(student, teacher) + 0.25 * ce)
    targets = topk_targets(teacher, 16)
    torch.testing.assert_close(distillation_loss(student, targets, ids), topk_forward_kl(student, targets))
