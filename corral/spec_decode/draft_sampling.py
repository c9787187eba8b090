"""Drawing draft tokens from a proposer's logits with each request's own sampling parameters, shared by the
draft model (``draft_model.py``) and the draft head (``draft_head.py``).

Drafts are sampled with the request's own parameters, so their distribution ``q`` is what the rejection sampler
divides by; greedy requests take the argmax. A reduced LM head (``head_token_ids``) scores only the target ids it
lists: the request's constraints (logit bias, banned tokens, penalties) are applied over the whole vocabulary with
-inf elsewhere, then temperature, top-k/p and min-p run over the head's columns alone, which gives the same
distribution as running them over the whole row (tokens at -inf have probability 0 under each filter) at a
fraction of the width. Sampled column ``j`` is target id ``head_token_ids[j]``, and ``q`` handed to the rejection
sampler is the full-vocabulary distribution, 0 outside the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from corral.engine.proposer import Draft
from corral.engine.request import Request
from corral.engine.spec_policy import DRAFT_MODEL_BUCKET
from corral.sample.metadata import SamplingMetadata, build_sampling_metadata
from corral.sample.ops import random_sample
from corral.sample.sampler import constrain_logits, sampling_probs


@dataclass
class DraftProposal:
    """One request's drafts as they are drawn."""

    request: Request
    num_tokens: int  # drafts wanted (lowered when the head has no allowed token left)
    generator: torch.Generator | None = None  # seeded requests: drafts are reproducible too
    token_ids: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # [vocab] each, random requests only

    def as_draft(self) -> Draft:
        return Draft(self.token_ids, torch.stack(self.probs) if self.probs else None, bucket=DRAFT_MODEL_BUCKET)


# Mixes a request's seed into its drafts' own: seeded with the seed itself, the drafts' stream would repeat the
# target's (the runner seeds the request's generator with it), so a draft would be drawn with the very uniform the
# target sampled or accepted with, and not independently of the check: the output would not follow the target.
_DRAFT_SEED_MULTIPLIER, _DRAFT_SEED_OFFSET = 0x9E3779B97F4A7C15, 0x632BE59BD9B4E019


def seeded_generator(request: Request, device: torch.device) -> torch.Generator | None:
    """A seeded request's draft generator (reproducible drafts, on a stream of their own); None when unseeded."""
    seed = request.sampling_params.seed
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * _DRAFT_SEED_MULTIPLIER + _DRAFT_SEED_OFFSET) % 2**63)
    return generator


def sample_drafts(
    proposals: list[DraftProposal],
    logits: torch.Tensor,
    head_token_ids: torch.Tensor | None,
    vocab_size: int,
    device: torch.device,
) -> None:
    """Draw each proposal's next draft from its row of ``logits`` (``[rows, vocab]``, or ``[rows, head_size]``
    with a reduced head), with its request's sampling parameters."""
    requests = [p.request for p in proposals]
    metadata = build_sampling_metadata(
        params=[r.sampling_params for r in requests],
        generators=[p.generator for p in proposals],
        prompt_token_ids=[r.prompt_token_ids for r in requests],
        output_token_ids=[
            p.request.output_token_ids + p.token_ids if p.request.sampling_params.has_penalties else ()
            for p in proposals
        ],
        banned_token_ids=[p.request.banned_token_ids(pending=p.token_ids) for p in proposals],
        vocab_size=vocab_size,
        device=device,
    )
    if head_token_ids is not None:
        _sample_from_head(proposals, logits, metadata, head_token_ids, vocab_size)
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
    proposals: list[DraftProposal], head_logits: torch.Tensor, metadata: SamplingMetadata,
    head_ids: torch.Tensor, vocab_size: int,
) -> None:
    """``sample_drafts`` for a reduced head: column j of ``head_logits`` scores target id ``head_ids[j]``."""
    head_size = head_ids.shape[0]
    constrained = head_logits
    if not _unconstrained(metadata):  # bias, bans and penalties address target ids: apply them there
        full = head_logits.new_full((head_logits.shape[0], vocab_size), float("-inf"))
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
            p.probs.append(probs.new_zeros(vocab_size).index_copy_(0, head_ids, probs[row]))


def _unconstrained(metadata: SamplingMetadata) -> bool:
    """Whether ``constrain_logits`` would leave every row as it is."""
    return (metadata.logit_bias is None and metadata.banned_token_coords is None
            and metadata.allowed_token_bitmask is None and metadata.no_penalties)
