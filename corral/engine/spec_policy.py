"""How many draft tokens to check for each request. Plain Python, no torch.

Checking ``k`` drafts costs one target pass over ``k + 1`` tokens instead of one; with acceptance
probability ``a`` per draft the pass emits ``(1 - a^(k+1)) / (1 - a)`` tokens on average (Leviathan et al.,
2023). With ``draft_cost`` the cost of one more checked token relative to a one-token decode step, the
policy asks each request for the ``k`` that maximises tokens per cost, estimating ``a`` from the request's
own history. When no ``k`` beats plain decoding it stops speculating for that request, except for a one-draft
probe every ``probe_interval`` tokens, so text that turns repetitive later is still noticed.
"""

from __future__ import annotations

from corral.engine.request import Request

# A fresh request counts as having had PRIOR_ACCEPTED of PRIOR_DRAFTED drafts accepted: optimistic, so
# speculation starts at full length and backs off only on evidence.
PRIOR_ACCEPTED = 3.0
PRIOR_DRAFTED = 4.0
_RATE_STEPS = 100  # acceptance rates are looked up at a resolution of 1%


class SpeculationPolicy:
    def __init__(
        self, num_speculative_tokens: int, adaptive: bool = True, draft_cost: float = 0.15, probe_interval: int = 16
    ):
        self.num_speculative_tokens = num_speculative_tokens
        self.adaptive = adaptive
        self.probe_interval = probe_interval
        self._best_k = [
            best_num_drafts(step / _RATE_STEPS, num_speculative_tokens, draft_cost) for step in range(_RATE_STEPS + 1)
        ]

    def num_spec_tokens(self, request: Request) -> int:
        limit = request.max_num_spec_tokens(self.num_speculative_tokens)
        if not self.adaptive or limit == 0:
            return limit
        rate = (request.num_accepted_tokens + PRIOR_ACCEPTED) / (request.num_draft_tokens + PRIOR_DRAFTED)
        k = self._best_k[round(rate * _RATE_STEPS)]
        if k == 0 and request.num_output_tokens % self.probe_interval == 0:
            k = 1
        return min(k, limit)


def expected_tokens(acceptance_rate: float, num_drafts: int) -> float:
    """Tokens one check of ``num_drafts`` drafts emits on average (accepted run plus the target's token)."""
    return sum(acceptance_rate**i for i in range(num_drafts + 1))


def best_num_drafts(acceptance_rate: float, max_drafts: int, draft_cost: float) -> int:
    """The ``k`` in 0..max_drafts with the most expected tokens per unit of target cost ``1 + draft_cost * k``."""
    return max(range(max_drafts + 1), key=lambda k: expected_tokens(acceptance_rate, k) / (1 + draft_cost * k))
