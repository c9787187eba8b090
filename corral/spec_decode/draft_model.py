"""Draft-model proposer: a smaller model with the target's tokenizer samples the next ``k`` tokens itself.

The draft keeps its own paged KV cache and block pool. Each sequence remembers which tokens the draft has
fed (``fed_token_ids``: positions 0.. of its cache); at each proposal the fed tokens that are still the
sequence's own (the real ones, then the drafts the target accepted) are kept, the rest are overwritten:
one pass feeds the unfed known tokens and samples draft 1, then each further draft is one decode step.
Drafts are drawn as ``draft_sampling.py`` says, over the draft's reduced LM head where it has one
(``model.head_token_ids``, a ``corral distill --draft-for`` model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from corral.engine.batch import ScheduledRequest, SchedulerOutput
from corral.engine.block_manager import BlockPool
from corral.engine.input_builder import ModelInputs, build_decode_inputs, build_model_inputs
from corral.engine.proposer import Draft
from corral.engine.request import Request
from corral.layers.attention.backend import AttentionBackend
from corral.models.spec import ModelConfig
from corral.spec_decode.draft_sampling import DraftProposal, sample_drafts, seeded_generator


@dataclass
class _DraftSequence:
    block_ids: list[int] = field(default_factory=list)
    fed_token_ids: list[int] = field(default_factory=list)  # tokens whose K/V the draft cache holds, in order
    num_real_fed: int = 0  # the first ones were the sequence's known tokens when fed (so they still are)
    generator: torch.Generator | None = None  # for seeded requests: drafts are reproducible too


@dataclass
class _Proposal(DraftProposal):
    sequence: _DraftSequence = field(default_factory=_DraftSequence)


class DraftModelProposer:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[torch.Tensor],
        backend: AttentionBackend,
        block_size: int,
        num_blocks: int,
        vocab_size: int,
        device: torch.device,
    ):
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.pool = BlockPool(num_blocks)
        self._sequences: dict[str, _DraftSequence] = {}
        # [head_size] target ids of the head's columns; None: the head scores the whole vocabulary in order
        self.head_token_ids: torch.Tensor | None = getattr(model, "head_token_ids", None)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @torch.inference_mode()
    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int]) -> list[Draft]:
        proposals = [self._prepare(r, k) for r, k in zip(requests, max_num_tokens, strict=True)]
        active = [p for p in proposals if p is not None]
        if active:
            self._catch_up_and_sample(active)
            for step in range(1, max(p.num_tokens for p in active)):
                self._decode_and_sample([p for p in active if p.num_tokens > step])
        return [Draft([]) if p is None else p.as_draft() for p in proposals]

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            sequence = self._sequences.pop(request_id, None)
            if sequence is not None:
                self.pool.release(sequence.block_ids[::-1])

    def _prepare(self, request: Request, num_tokens: int) -> _Proposal | None:
        """Drop the fed tokens the sequence no longer has, and reserve cache slots for this proposal's
        positions (up to ``num_tokens - 1`` drafts past the last token); None when there is nothing to do
        or no room."""
        if num_tokens < 1:
            return None
        sequence = self._sequences.get(request.request_id)
        if sequence is None:
            sequence = self._sequences[request.request_id] = _DraftSequence(generator=seeded_generator(request, self.device))
        fed, known = sequence.fed_token_ids, request.all_token_ids
        num_valid = sequence.num_real_fed
        while num_valid < len(fed) and num_valid < len(known) and fed[num_valid] == known[num_valid]:
            num_valid += 1
        del fed[min(num_valid, request.num_tokens - 1) :]  # the last token is always fed: its logits are needed

        num_blocks = -(-(request.num_tokens + num_tokens - 1) // self.block_size)
        missing = num_blocks - len(sequence.block_ids)
        if missing > self.pool.num_free_blocks:
            return None
        if missing > 0:
            sequence.block_ids.extend(self.pool.allocate(missing))
        return _Proposal(request, num_tokens, sequence.generator, sequence=sequence)

    def _catch_up_and_sample(self, proposals: list[_Proposal]) -> None:
        """One pass over every sequence's unfed known tokens; samples draft 1 from each last token's logits."""
        scheduled = [
            ScheduledRequest(p.request, len(p.sequence.fed_token_ids),
                             p.request.num_tokens - len(p.sequence.fed_token_ids), p.sequence.block_ids)
            for p in proposals
        ]
        inputs = build_model_inputs(SchedulerOutput(scheduled=scheduled), self.block_size, self.device)
        logits = self._logits(inputs)
        row_of = {s.request.request_id: row for row, s in enumerate(inputs.sampling_requests)}
        logits = logits[torch.tensor([row_of[p.request.request_id] for p in proposals], device=self.device)]
        for p in proposals:
            p.sequence.fed_token_ids.extend(p.request.all_token_ids[len(p.sequence.fed_token_ids) :])
            p.sequence.num_real_fed = p.request.num_tokens
        self._sample(proposals, logits)

    def _decode_and_sample(self, proposals: list[_Proposal]) -> None:
        """Feed each sequence's latest draft at the position after it and sample the next."""
        inputs = build_decode_inputs(
            [p.token_ids[-1] for p in proposals],
            [p.request.num_tokens - 1 + len(p.token_ids) for p in proposals],
            [p.sequence.block_ids for p in proposals],
            self.block_size,
            self.device,
        )
        for p in proposals:
            p.sequence.fed_token_ids.append(p.token_ids[-1])
        self._sample(proposals, self._logits(inputs))

    def _logits(self, inputs: ModelInputs) -> torch.Tensor:
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn_metadata, self.backend)
        hidden = hidden[inputs.logits_indices]
        if self.head_token_ids is not None:
            return self.model.compute_head_logits(hidden).float()  # [rows, head_size]
        return self.model.compute_logits(hidden).float()  # [rows, vocab]

    def _sample(self, proposals: list[_Proposal], logits: torch.Tensor) -> None:
        sample_drafts(proposals, logits, self.head_token_ids, self.vocab_size, self.device)


def relative_step_cost(draft: ModelConfig, target: ModelConfig) -> float:
    """A draft decode step's cost as a fraction of the target's, estimated by the weights each reads (its decoder
    layers and LM head rows; the input embedding is a lookup): a decode step streams its weights once. It takes
    the two stored alike; the default GGUF's Q8_0 head costs the target a little more."""
    return weights_per_step(draft) / weights_per_step(target)


def weights_per_step(config: ModelConfig) -> int:
    q_size, kv_size = config.num_attention_heads * config.head_size, config.num_key_value_heads * config.head_size
    hidden = config.hidden_size
    per_layer = hidden * (2 * q_size + 2 * kv_size) + 3 * hidden * config.intermediate_size
    head_rows = config.draft_vocab_size if config.draft_vocab_size is not None else config.vocab_size
    return config.num_hidden_layers * per_layer + head_rows * hidden

