"""The distillation loss: forward KL(teacher || student) of next-token distributions at a temperature, from the
teacher's full logits or from its cached top-k, plus an optional cross-entropy on the text's next tokens.

Forward KL (the teacher's expectation of log p_teacher - log p_student) is mode-covering: the student is
pushed to put mass wherever the teacher does, the classic word-level distillation of Hinton et al. and the
objective the issue asks for (MiniLLM and GKD argue for reverse or generalized JSD on generative tasks; not
here). The loss is scaled by T^2 so its gradients keep their size as the temperature changes.

Top-k targets: the teacher's k most likely tokens plus one "tail" bucket holding the rest of its mass. The
loss is the exact KL between the two (k+1)-bucket distributions, the student's tail being the mass it puts
outside those k ids. By the data-processing inequality that is at most the full KL, and equal to it when the
teacher's tail is empty (k = vocab). Dropping the tail instead (renormalizing the top-k) would reward the
student for any mass it leaves outside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Where the student puts (numerically) no mass outside the top-k, its tail log-probability is clamped here:
# the term is multiplied by the teacher's tail mass, which is exactly 0 whenever this clamp is reached in tests.
_MIN_TAIL_LOGPROB = -100.0


@dataclass(frozen=True)
class TopKTargets:
    """The teacher's top-k next-token log-probabilities at the run's temperature, for a batch of windows."""

    logprobs: torch.Tensor  # [batch, tokens, k] float32, descending
    token_ids: torch.Tensor  # [batch, tokens, k] int64
    tail_logprob: torch.Tensor  # [batch, tokens] log of the mass outside the k ids (-inf: none)


def topk_targets(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKTargets:
    """Top-k targets of ``teacher_logits`` ``[batch, tokens, vocab]``; the tail's log-mass is a logsumexp
    over the other ids, not ``log(1 - sum)``, so it stays exact when the tail is tiny."""
    logprobs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top_logprobs, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    tail = logprobs.scatter(-1, top_ids, float("-inf")).logsumexp(dim=-1)
    return TopKTargets(top_logprobs, top_ids, tail)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) at ``temperature``, times T^2; logits ``[..., vocab]``."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature**2


def topk_forward_kl(student_logits: torch.Tensor, targets: TopKTargets, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of the KL between the teacher's and the student's (k+1)-bucket distributions
    (the k ids, then everything else), times T^2."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [batch, tokens, vocab]
    student_top = student.gather(-1, targets.token_ids)  # [batch, tokens, k]
    # a large finite mask, not -inf: logsumexp's backward over an all -inf row is NaN (k = vocab)
    student_tail = student.scatter(-1, targets.token_ids, -1e30).logsumexp(dim=-1).clamp(min=_MIN_TAIL_LOGPROB)
    top_term = (targets.logprobs.exp() * (targets.logprobs - student_top)).sum(-1)
    tail_mass = targets.tail_logprob.exp()  # exactly 0 where the tail is -inf
    tail_term = torch.xlogy(tail_mass, tail_mass) - tail_mass * student_tail
    return (top_term + tail_term).mean() * temperature**2


def next_token_cross_entropy(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each window's next tokens: logits ``[batch, tokens, vocab]``, ids ``[batch, tokens]``
    (the last position has no target)."""
    logits = student_logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopKTargets,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """KL to the teacher (full logits ``[batch, tokens, vocab]`` or top-k targets) plus ``ce_weight`` times the
    cross-entropy on ``input_ids``'s next tokens."""
    if isinstance(teacher, TopKTargets):
        loss = topk_forward_kl(student_logits, teacher, temperature)
    else:
        loss = forward_kl(student_logits, teacher, temperature)
    if ce_weight > 0:
        loss = loss + ce_weight * next_token_cross_entropy(student_logits, input_ids)
    return loss
