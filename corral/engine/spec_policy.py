"""How many draft tokens to check for each request. Plain Python, no torch.

A step's time is about ``F + c * rows``: a fixed part (weights streamed once, Python, sampling) plus a cost
per token row. Checking ``k`` drafts adds ``k`` rows; with acceptance probability ``a`` per draft the check
emits ``(1 - a^(k+1)) / (1 - a)`` tokens on average (Leviathan et al., 2023). Against the request's share of
a plain step, ``(F + c * B) / B`` for ``B`` running requests, a draft costs ``draft_cost = B / (F/c + B)``:
about a third of a decode at batch 1 on a CPU, nearly a whole one in big batches, where speculation
no longer pays. The policy asks each request for the ``k`` that maximises expected tokens per cost
``1 + draft_cost * k``, estimating ``a`` from the request's own history. When no ``k`` beats plain decoding
it stops speculating for that request, except for a one-draft probe every ``probe_interval`` tokens, so
text that turns repetitive later is still noticed.
"""

from __future__ import annotations

from functools import cache

from corral.engine.request import Request

# A fresh request counts as having had PRIOR_ACCEPTED of PRIOR_DRAFTED drafts accepted: optimistic, so
# speculation starts long and backs off on evidence.
PRIOR_ACCEPTED = 7.0
PRIOR_DRAFTED = 8.0
# F / c above for the default model on the CPU kernels: conservative (per-step timings on the Zen 3 host give
# 4-5: a 1-row step ~9 ms, each further row 1.5-2 ms), so drafts must be likelier to pay before they are asked for.
FIXED_COST_ROWS = 2.0
_RATE_STEPS = 100  # acceptance rates are looked up at a resolution of 1%


class SpeculationPolicy:
    def __init__(
        self,
        num_speculative_tokens: int,
        adaptive: bool = True,
        fixed_cost_rows: float = FIXED_COST_ROWS,
        probe_interval: int = 16,
    ):
        self.num_speculative_tokens = num_speculative_tokens
        self.adaptive = adaptive
        self.fixed_cost_rows = fixed_cost_rows
        self.probe_interval = probe_interval

    def num_spec_tokens(self, request: Request, batch_size: int = 1) -> int:
        """Drafts to ask for ``request`` when ``batch_size`` requests are running."""
        limit = request.max_num_spec_tokens(self.num_speculative_tokens)
        if not self.adaptive or limit == 0:
            return limit
        rate = (request.num_accepted_tokens + PRIOR_ACCEPTED) / (request.num_draft_tokens + PRIOR_DRAFTED)
        draft_cost = batch_size / (self.fixed_cost_rows + batch_size)
        k = _best_num_drafts_cached(round(rate * _RATE_STEPS), self.num_speculative_tokens, round(draft_cost, 2))
        if k == 0 and request.num_output_tokens % self.probe_interval == 0:
            k = 1
        return min(k, limit)


def expected_tokens(acceptance_rate: float, num_drafts: int) -> float:
    """Tokens one check of ``num_drafts`` drafts emits on average (accepted run plus the target's token)."""
    return sum(acceptance_rate**i for i in range(num_drafts + 1))


def best_num_drafts(acceptance_rate: float, max_drafts: int, draft_cost: float) -> int:
    """The ``k`` in 0..max_drafts with the most expected tokens per unit of cost ``1 + draft_cost * k``."""
    return max(range(max_drafts + 1), key=lambda k: expected_tokens(acceptance_rate, k) / (1 + draft_cost * k))


@cache
def _best_num_drafts_cached(rate_percent: int, max_drafts: int, draft_cost: float) -> int:
    return best_num_drafts(rate_percent / _RATE_STEPS, max_drafts, draft_cost)
