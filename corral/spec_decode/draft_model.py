"""Draft-model proposer: a smaller model with the target's tokenizer samples the next ``k`` tokens itself.

The draft keeps its own paged KV cache and block pool. Each sequence remembers which tokens the draft has
fed (``fed_token_ids``: positions 0.. of its cache); at each proposal the fed tokens that are still the
sequence's own (the real ones, then the drafts the target accepted) are kept, the rest are overwritten:
one pass feeds the unfed known tokens and samples draft 1, then each further draft is one decode step.
Drafts are sampled with the request's own sampling parameters, so their distribution ``q`` is what the
rejection sampler divides by; greedy requests take the draft's argmax.

A draft with a reduced LM head (``model.head_token_ids``, a ``corral distill --draft-for`` model) scores only
the target ids it lists: the request's constraints (logit bias, banned tokens, penalties) are applied over the
whole vocabulary with -inf elsewhere, then temperature, top-k/p and min-p run over the head's columns alone,
which gives the same distribution as running them over the whole row (tokens at -inf have probability 0
under each filter) at a sixth of the width. Sampled column ``j`` is target id ``head_token_ids[j]``, and
``q`` handed to the rejection sampler is the full-vocabulary distribution, 0 outside the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from corral.engine.batch import ScheduledRequest, SchedulerOutput
from corral.engine.block_manager import BlockPool
from corral.engine.input_builder import ModelInputs, build_decode_inputs, build_model_inputs
from corral.engine.proposer import Draft
from corral.engine.request import Request
from corral.engine.spec_policy import DRAFT_MODEL_BUCKET
from corral.layers.attention.backend import AttentionBackend
from corral.models.spec import ModelConfig
from corral.sample.metadata import SamplingMetadata, build_sampling_metadata
from corral.sample.ops import random_sample
from corral.sample.sampler import constrain_logits, sampling_probs


@dataclass
class _DraftSequence:
    block_ids: list[int] = field(default_factory=list)
    fed_token_ids: list[int] = field(default_factory=list)  # tokens whose K/V the draft cache holds, in order
    num_real_fed: int = 0  # the first ones were the sequence's known tokens when fed (so they still are)
    generator: torch.Generator | None = None  # for seeded requests: drafts are reproducible too


@dataclass
class _Proposal:
    request: Request
    sequence: _DraftSequence
    num_tokens: int  # drafts wanted
    token_ids: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # [vocab] each, random requests only


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
        return [Draft([]) if p is None else _as_draft(p) for p in proposals]

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
            sequence = self._sequences[request.request_id] = _DraftSequence(generator=self._generator(request))
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
        return _Proposal(request, sequence, num_tokens)

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

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
        """Draw each proposal's next draft from its row, with its request's sampling parameters."""
        requests = [p.request for p in proposals]
        metadata = build_sampling_metadata(
            params=[r.sampling_params for r in requests],
            generators=[p.sequence.generator for p in proposals],
            prompt_token_ids=[r.prompt_token_ids for r in requests],
            output_token_ids=[
                p.request.output_token_ids + p.token_ids if p.request.sampling_params.has_penalties else ()
                for p in proposals
            ],
            banned_token_ids=[p.request.banned_token_ids(pending=p.token_ids) for p in proposals],
            vocab_size=self.vocab_size,
            device=self.device,
        )
        if self.head_token_ids is not None:
            self._sample_from_head(proposals, logits, metadata)
            return
        constrained = constrain_logits(logits, metadata)
        if metadata.all_greedy:
            for p, token_id in zip(proposals, constrained.argmax(dim=-1).tolist(), strict=True):
                p.token_ids.append(token_id)
            return
        probs = sampling_probs(constrained, metadata)  # [rows, vocab]
        sampled = random_sample(probs, metadata.generators)
        if not metadata.all_random:
            sampled = torch.where(metadata.temperature == 0, constrained.argmax(dim=-1), sampled)
        for row, (p, token_id) in enumerate(zip(proposals, sampled.tolist(), strict=True)):
            p.token_ids.append(token_id)
            if not p.request.sampling_params.is_greedy:
                p.probs.append(probs[row])

    def _sample_from_head(
        self, proposals: list[_Proposal], head_logits: torch.Tensor, metadata: SamplingMetadata
    ) -> None:
        """``_sample`` for a reduced head: ``head_logits`` ``[rows, head_size]``, column j scoring target id
        ``head_token_ids[j]``; the rest of the vocabulary has probability 0."""
        head_ids = self.head_token_ids
        head_size = head_ids.shape[0]
        constrained = head_logits
        if not _unconstrained(metadata):  # bias, bans and penalties address target ids: apply them there
            full = head_logits.new_full((head_logits.shape[0], self.vocab_size), float("-inf"))
            constrained = constrain_logits(full.index_copy_(1, head_ids, head_logits), metadata)[:, head_ids]
        # a row whose every head token is forbidden has no draft distribution: its proposal ends here
        drafting = torch.isfinite(constrained).any(dim=-1).tolist()
        greedy_columns = constrained.argmax(dim=-1)
        probs = sampled = None
        if not metadata.all_greedy:
            head_metadata = metadata
            if metadata.top_k is not None:  # "no top-k" is the vocabulary size; the head has fewer columns
                head_metadata = replace(metadata, top_k=metadata.top_k.clamp(max=head_size),
                                        max_top_k=min(metadata.max_top_k, head_size))
            safe = torch.where(torch.tensor(drafting, device=constrained.device)[:, None], constrained, 0.0)
            probs = sampling_probs(safe, head_metadata)  # [rows, head_size]
            sampled = random_sample(probs, metadata.generators)
            if not metadata.all_random:
                sampled = torch.where(metadata.temperature == 0, greedy_columns, sampled)
        columns = greedy_columns if sampled is None else sampled
        for row, (p, token_id) in enumerate(zip(proposals, head_ids[columns].tolist(), strict=True)):
            if not drafting[row]:
                p.num_tokens = len(p.token_ids)
                continue
            p.token_ids.append(token_id)
            if probs is not None and not p.request.sampling_params.is_greedy:
                p.probs.append(probs.new_zeros(self.vocab_size).index_copy_(0, head_ids, probs[row]))


def relative_step_cost(draft: ModelConfig, target: ModelConfig) -> float:
    """A draft decode step's cost as a fraction of the target's, estimated by the weights each reads (its decoder
    layers and LM head rows; the input embedding is a lookup): a decode step streams its weights once. It takes
    the two stored alike; the default GGUF's Q8_0 head costs the target a little more."""
    return _weights_per_step(draft) / _weights_per_step(target)


def _weights_per_step(config: ModelConfig) -> int:
    q_size, kv_size = config.num_attention_heads * config.head_size, config.num_key_value_heads * config.head_size
    hidden = config.hidden_size
    per_layer = hidden * (2 * q_size + 2 * kv_size) + 3 * hidden * config.intermediate_size
    head_rows = config.draft_vocab_size if config.draft_vocab_size is not None else config.vocab_size
    return config.num_hidden_layers * per_layer + head_rows * hidden


def _unconstrained(metadata: SamplingMetadata) -> bool:
    """Whether ``constrain_logits`` would leave every row as it is."""
    return (metadata.logit_bias is None and metadata.banned_token_coords is None
            and metadata.allowed_token_bitmask is None and metadata.no_penalties)


def _as_draft(proposal: _Proposal) -> Draft:
    probs = torch.stack(proposal.probs) if proposal.probs else None
    return Draft(proposal.token_ids, probs, bucket=DRAFT_MODEL_BUCKET)

