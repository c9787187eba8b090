"""The Proposer protocol: what speculative decoding asks of a draft source (``corral/spec_decode/``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from corral.engine.request import Request


@dataclass
class Draft:
    """Tokens proposed to follow a request's known tokens, and the distribution each was drawn from."""

    token_ids: list[int]
    # [len(token_ids), vocab_size] q of each token, as the rejection sampler needs it for random requests;
    # None when the proposal is deterministic (q one-hot on the token) or the request is greedy.
    probs: torch.Tensor | None = None
    # Drafts in one bucket share acceptance statistics (engine/spec_policy.py): the proposer's reason to
    # propose them, such as the n-gram proposer's matched length.
    bucket: int = 0


class Proposer(Protocol):
    """Guesses the next tokens of running requests. Proposals need not be good, only cheap: the target model
    checks every one, so a proposer never changes what is generated, only how fast."""

    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int]) -> list[Draft]:
        """One draft per request, of at most ``max_num_tokens[i]`` tokens (possibly none), continuing
        ``requests[i].all_token_ids``. Called once per engine step, after the step's tokens are appended."""
        ...

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        """Forget finished requests' state (a draft model's KV blocks). Unknown ids are ignored."""
        ...


@runtime_checkable
class FeatureObserver(Protocol):
    """A proposer that drafts from the target's own last hidden state (a draft head, ``spec_decode/draft_head.py``).
    After each step the runner hands it, for every request that sampled, the hidden row that produced the
    request's last token."""

    def observe_features(self, request_ids: Sequence[str], features: torch.Tensor) -> None:
        """``features[i]`` (``[num_requests, hidden_size]``, the rows the LM head read) belongs to ``request_ids[i]``."""
        ...
