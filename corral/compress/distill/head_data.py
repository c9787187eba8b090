"""A draft head's training data: the target's own replies to chat prompts and the target's final hidden states
along them.

The head learns to continue the target's features, so both come from the target: sequences are rendered prompts
followed by the target's sampled replies (split by sequence into training and held-out ones, seeded), and each
position from the last prompt token on carries the post-norm hidden state the target's LM head reads there (from
the float dense forward, ``DenseForward.hidden_states``). A reply that ended on a stop token loses that token:
the feature after it predicts what follows the end of a turn, which no draft is ever asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from corral.compress.dense_forward import DenseForward
from corral.compress.distill.config import DistillError
from corral.compress.distill.data import TeacherSampler, draw


@dataclass(frozen=True)
class SampledSequences:
    """Rendered prompts with the target's replies; ``prompt_lengths[i]`` tokens of ``token_ids[i]`` are prompt."""

    token_ids: list[list[int]]
    prompt_lengths: list[int]

    def subset(self, indices: Sequence[int]) -> SampledSequences:
        return SampledSequences([self.token_ids[i] for i in indices], [self.prompt_lengths[i] for i in indices])

    def flat_ids(self) -> torch.Tensor:
        """Every token of every sequence, prompts included: ``[num_tokens]`` int64."""
        return torch.tensor([t for ids in self.token_ids for t in ids], dtype=torch.int64)


@dataclass(frozen=True)
class FeatureSet:
    """The target's features along sequences, concatenated: ``features[j]`` is the post-norm hidden state at the
    position of ``token_ids[j]``, the one the LM head reads to predict the next token, which is
    ``token_ids[j + 1]`` when ``j + 1`` is in the same sequence (``sequence_ends`` holds each one's end)."""

    features: torch.Tensor  # [num_positions, hidden_size] float32
    token_ids: torch.Tensor  # [num_positions] int64
    sequence_ends: torch.Tensor  # [num_sequences] int64, exclusive, increasing

    def rows(self, depth: int) -> torch.Tensor:
        """The positions ``j`` that start a window of ``depth`` draft steps: ``j + depth`` in ``j``'s sequence,
        so the true tokens ``token_ids[j+1 .. j+depth]`` and features ``features[j+1 .. j+depth]`` exist."""
        starts = torch.cat((torch.zeros(1, dtype=torch.int64), self.sequence_ends[:-1]))
        spans = [torch.arange(start, end - depth) for start, end in zip(starts.tolist(), self.sequence_ends.tolist())
                 if end - depth > start]
        return torch.cat(spans) if spans else torch.zeros(0, dtype=torch.int64)


def sample_sequences(prompts: Sequence[list[int]], num_samples: int, max_new_tokens: int,
                     sample: TeacherSampler, seed: int) -> SampledSequences:
    """``num_samples`` replies of the target, to prompts drawn without replacement (again once they run out:
    the sampler seeds each request apart, so a repeated prompt gets another reply)."""
    if not prompts:
        raise DistillError("no chat prompts to sample the target's replies from")
    chosen = [list(prompts[i]) for i in draw(len(prompts), num_samples, seed)]
    replies = sample(chosen, [max_new_tokens] * len(chosen), seed)
    return SampledSequences([p + list(r) for p, r in zip(chosen, replies, strict=True)], [len(p) for p in chosen])


def split_heldout(num_sequences: int, heldout_share: float, seed: int) -> tuple[list[int], list[int]]:
    """Sequence indices for training and for evaluation, a seeded ``heldout_share`` of them (at least one each)."""
    if num_sequences < 2:
        raise DistillError(f"{num_sequences} sampled sequence(s): need at least 2 (one is held out)")
    num_heldout = min(num_sequences - 1, max(1, round(num_sequences * heldout_share)))
    order = torch.randperm(num_sequences, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[num_heldout:]), sorted(order[:num_heldout])


def target_features(forward: DenseForward, sequences: SampledSequences, stop_ids: Collection[int],
                    on_progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """The target's features from each sequence's last prompt token on (``FeatureSet``), a final stop token cut."""
    features, token_ids, ends, total = [], [], [], 0
    with torch.inference_mode():
        for index, (ids, prompt_length) in enumerate(zip(sequences.token_ids, sequences.prompt_lengths, strict=True)):
            if prompt_length < 1:
                raise DistillError(f"sequence {index} has an empty prompt")
            if ids[-1] in stop_ids and len(ids) > prompt_length:
                ids = ids[:-1]
            first = prompt_length - 1  # the last prompt token's feature predicts the first reply token
            hidden = forward.hidden_states(torch.tensor([ids], dtype=torch.int64))[0, first:]  # [n, hidden]
            features.append(hidden.float().clone())
            token_ids.append(torch.tensor(ids[first:], dtype=torch.int64))
            total += len(hidden)
            ends.append(total)
            if on_progress is not None:
                on_progress(index + 1, len(sequences.token_ids))
    hidden_size = forward.config.hidden_size
    return FeatureSet(torch.cat(features) if features else torch.zeros(0, hidden_size),
                      torch.cat(token_ids) if token_ids else torch.zeros(0, dtype=torch.int64),
                      torch.tensor(ends, dtype=torch.int64))
