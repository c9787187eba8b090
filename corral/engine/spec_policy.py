"""How many draft tokens to check for each request. Plain Python, no torch.

A step's time is about ``F + c * rows``: a fixed part (weights streamed once, Python, sampling) plus a cost
per token row. Checking ``k`` drafts adds ``k`` rows. Against the request's share of a plain step,
``(F + c * B) / B`` for ``B`` running requests, a draft costs ``draft_cost = B / (F/c + B)``: a fraction of
a decode at batch 1 on a CPU, nearly a whole one in big batches, where speculation no longer pays.

Acceptance is not a coin flip per draft: a proposal is right for a whole run (the output copies a passage)
or wrong from its first token. So the policy tracks, per *bucket* of drafts, the chance that draft ``j`` is
accepted given that drafts ``1 .. j - 1`` were (a hazard per position; positions never reached are not
counted). A proposer puts its drafts in buckets by what made it propose them: the n-gram proposer by the
length of the matched suffix, since a long match is far likelier to go on than a one-token one. Each
request's own counts are shrunk toward the engine's counts for the bucket (which decay, to follow the
workload), and those toward an optimistic prior, so a fresh request speculates and backs off on evidence.
Seeded random requests cannot use the engine's counts (see ``_shares_engine_counts``); theirs are shrunk
toward the request's own counts over all its buckets instead, so that drafts failing in some buckets make
the request wary of the others before each has failed on its own.

The policy asks for the ``k`` that maximises expected tokens ``1 + sum_j P(drafts 1..j accepted)`` per
cost ``1 + draft_cost * k``. Before proposing (where a draft costs a draft-model pass) it bounds ``k`` by
the request's most promising bucket, each draft then also costing ``proposer_cost`` (a draft model's
forward pass, as a fraction of the target's); once the drafts are known (that cost spent) it trims them to
their own bucket's ``k``.
When no ``k`` beats plain decoding it stops speculating for that request, except for a one-draft probe
every ``probe_interval`` tokens, so text that turns repetitive later is still noticed. A probe of a draft
model is not cheap (the draft's pass, which first feeds it every token since its last one, cost a third to
a half of a target step on the default model), so with a costly proposer the requests that share the
engine's counts share its probes: one is due every ``probe_interval`` engine steps (``begin_step``) and
goes to the request that probed longest ago, so a batch of ``B`` makes one probe where one request would,
not ``B``, and short requests still probe in turn. Each failed probe doubles the spacing, up to
``MAX_PROBE_BACKOFF`` times ``probe_interval``; a kept probe resets it. A seeded random request spaces its
own probes by its own tokens, and its cost model takes it as alone (batch size 1), so how many drafts it
checks never depends on what runs beside it.

With a lookup in front of a draft model (method ``ngram_draft``) each request has two sources of drafts:
the lookup's buckets (its match lengths, free to propose) and the draft model's (``DRAFT_MODEL_BUCKET``, at
``proposer_cost`` a draft). ``num_spec_tokens(..., source=...)`` then judges one source at a time, each with its
own cost and its own kind of probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.engine.request import Request

# Whose drafts ``num_spec_tokens`` judges: the one proposer's, or with a lookup in front of a draft model
# (method ngram_draft) the lookup's or the draft model's.
DraftSource = Literal["only", "lookup", "draft_model"]

# The prior for a draft's acceptance, worth PRIOR_WEIGHT observations: optimistic, so speculation starts
# long and backs off on evidence.
PRIOR_ACCEPTANCE = 0.8
PRIOR_WEIGHT = 2.0
# How many observations a request's own counts need to outweigh the engine's counts for the bucket.
REQUEST_WEIGHT = 4.0
# The engine's counts for a bucket shrink by this factor per check in that bucket: about the last 50 count.
ENGINE_DECAY = 0.98
# F / c above for the default model on the CPU kernels, at the low end of what was measured (Zen 3, AVX2: 4-6,
# a 1-row step ~9-10 ms and each further row ~1.7 ms; Intel Xeon, AVX-512 VNNI: 8-10, ~10 ms and ~1.1 ms).
# A/B on the Xeon host (paired single-request speed-ups, edit paragraph / edit document / story): 2 gave
# 1.67-1.75x / 1.73-1.81x / 0.96-1.02x, 4 gave 1.79x / 2.02x / 0.95-0.97x, 6 gave 1.89-1.93x / 1.91-2.14x / 0.95-0.98x.
FIXED_COST_ROWS = 6.0
# With a costly proposer, failed probes space the next ones out up to this many times ``probe_interval``.
MAX_PROBE_BACKOFF = 8
# The bucket of a draft model's drafts. The n-gram proposer's are its match lengths, 1 and up, so the policy
# can tell the two apart when a lookup runs in front of a draft model (method ngram_draft).
DRAFT_MODEL_BUCKET = 0


@dataclass
class HazardCounts:
    """For draft positions 1..K: how often a check reached position j (drafts before it all accepted) and
    how often draft j was then accepted."""

    reached: list[float]
    accepted: list[float]

    @classmethod
    def empty(cls, num_positions: int) -> HazardCounts:
        return cls([0.0] * num_positions, [0.0] * num_positions)

    def record(self, num_drafts: int, num_accepted: int, decay: float = 1.0) -> None:
        if decay != 1.0:
            self.reached = [r * decay for r in self.reached]
            self.accepted = [a * decay for a in self.accepted]
        for j in range(min(num_drafts, num_accepted + 1)):
            self.reached[j] += 1
            if j < num_accepted:
                self.accepted[j] += 1


@dataclass
class _SharedProbes:
    """A costly proposer's probes for the requests that share the engine's counts: one due every
    ``interval`` engine steps, handed to the request that probed longest ago."""

    interval: int
    step: int = 0  # engine steps so far
    last_probe: int = 0  # the step of the last probe
    oldest_last_step: float = math.inf  # the earliest ``probed_at`` among the last step's candidates
    oldest_this_step: float = math.inf

    def begin_step(self) -> None:
        self.step += 1
        self.oldest_last_step, self.oldest_this_step = self.oldest_this_step, math.inf

    def claim(self, history: _RequestHistory) -> bool:
        """True: the probe is due and this candidate (a request not speculating this step) takes it."""
        if history.probed_at is None:
            history.probed_at = self.step  # first seen: in line behind those waiting longer
        due = self.step - self.last_probe >= self.interval and history.probed_at <= self.oldest_last_step
        if due:
            self.last_probe = history.probed_at = self.step
        self.oldest_this_step = min(self.oldest_this_step, history.probed_at)
        return due


@dataclass
class _RequestHistory:
    counts: dict[int, HazardCounts] = field(default_factory=dict)  # bucket -> the request's own checks
    # all of the request's checks, whatever their bucket, per source (True: the draft model's): kept only for
    # requests that cannot share the engine's counts, which shrink toward it instead
    pooled: dict[bool, HazardCounts] = field(default_factory=dict)
    pending_bucket: int = 0  # the bucket of the drafts now being checked
    probing: bool = False  # the drafts now asked for are a probe
    costly_probe: bool = False  # ... of a draft model (failures space the next ones out)
    probed_at: int | None = None  # shared probes: the engine step of its last probe (or when first seen)
    own_interval: int = 0  # seeded random requests' own probes: tokens between them, and the last one's
    own_last_probe: int = 0


def _shares_engine_counts(request: Request) -> bool:
    """A seeded random request must draw the same tokens whatever runs beside it, and how many drafts it
    checks decides which random numbers it uses: it goes by its own history only."""
    return request.sampling_params.seed is None or request.sampling_params.is_greedy


def expected_tokens(acceptance: Sequence[float], num_drafts: int) -> float:
    """Tokens one check of ``num_drafts`` drafts emits on average (accepted run plus the target's token),
    given the chance ``acceptance[j]`` that draft ``j + 1`` is accepted when all before it were."""
    total, run = 1.0, 1.0
    for j in range(num_drafts):
        run *= acceptance[j]
        total += run
    return total


def best_num_drafts(acceptance: Sequence[float], max_drafts: int, draft_cost: float) -> int:
    """The ``k`` in 0..max_drafts with the most expected tokens per unit of cost ``1 + draft_cost * k``."""
    best_k, best_value, total, run = 0, 1.0, 1.0, 1.0
    for k in range(1, max_drafts + 1):
        run *= acceptance[k - 1]
        total += run
        if total / (1 + draft_cost * k) > best_value:
            best_k, best_value = k, total / (1 + draft_cost * k)
    return best_k


class SpeculationPolicy:
    def __init__(
        self,
        num_speculative_tokens: int,
        adaptive: bool = True,
        fixed_cost_rows: float = FIXED_COST_ROWS,
        probe_interval: int = 16,
        proposer_cost: float = 0.0,
    ):
        self.num_speculative_tokens = num_speculative_tokens
        self.adaptive = adaptive
        self.fixed_cost_rows = fixed_cost_rows
        self.probe_interval = probe_interval
        self.proposer_cost = proposer_cost  # of proposing one draft, in target decode steps (0: n-gram lookup)
        self._shared_probes = _SharedProbes(probe_interval)
        self._engine_counts: dict[int, HazardCounts] = {}
        self._requests: dict[str, _RequestHistory] = {}

    def begin_step(self) -> None:
        """A new engine step: called before its ``num_spec_tokens`` calls (it paces the shared probes)."""
        self._shared_probes.begin_step()

    def num_spec_tokens(self, request: Request, batch_size: int = 1, source: DraftSource = "only") -> int:
        """Drafts to ask for ``request`` when ``batch_size`` requests are running: the most any bucket it has
        seen (or a fresh one) would keep. ``source``: ``"only"`` for the one proposer; with a lookup in front
        of a draft model, ``"lookup"`` (its buckets, free) or ``"draft_model"`` (its bucket, at its cost)."""
        if not _shares_engine_counts(request):
            batch_size = 1  # its draft counts must not depend on what runs beside it
        limit = request.max_num_spec_tokens(self.num_speculative_tokens)
        if not self.adaptive or limit == 0:
            return limit
        costly = source == "draft_model" or (source == "only" and self.proposer_cost > 0)
        history = self._requests.get(request.request_id)
        if source == "draft_model":
            buckets = {DRAFT_MODEL_BUCKET}
        else:
            buckets = set(history.counts) if history else set()
            if _shares_engine_counts(request):
                buckets |= set(self._engine_counts)
            if source == "lookup":
                buckets = {b for b in buckets if b != DRAFT_MODEL_BUCKET} or {DRAFT_MODEL_BUCKET + 1}
        k = 0
        for bucket in sorted(buckets or {0}, reverse=True):  # long matches first: they usually keep the most
            k = max(k, self._best(request, bucket, batch_size, self.proposer_cost if costly else 0.0))
            if k >= limit:
                break
        history = self._requests.setdefault(request.request_id, _RequestHistory())
        history.probing = k == 0 and self._probe_due(request, history, costly)
        history.costly_probe = history.probing and costly
        return min(1 if history.probing else k, limit)

    def probe_interval_of(self, request: Request) -> int:
        """A costly proposer's spacing of ``request``'s probes: the engine's steps, or its own tokens."""
        if _shares_engine_counts(request):
            return self._shared_probes.interval
        history = self._requests.get(request.request_id)
        return history.own_interval if history and history.own_interval else self.probe_interval

    def _probe_due(self, request: Request, history: _RequestHistory, costly: bool) -> bool:
        if not costly:  # an n-gram lookup: a probe costs one row, so probe on schedule
            return request.num_output_tokens % self.probe_interval == 0
        if _shares_engine_counts(request):
            return self._shared_probes.claim(history)
        if request.num_output_tokens - history.own_last_probe < self.probe_interval_of(request):
            return False
        history.own_last_probe = request.num_output_tokens
        return True

    def _after_probe(self, request: Request, history: _RequestHistory, kept: bool) -> None:
        if not history.costly_probe:
            return
        longest = self.probe_interval * MAX_PROBE_BACKOFF
        interval = self.probe_interval if kept else min(2 * self.probe_interval_of(request), longest)
        if _shares_engine_counts(request):
            self._shared_probes.interval = interval
        else:
            history.own_interval = interval

    def trim(self, request: Request, num_proposed: int, bucket: int, batch_size: int = 1) -> int:
        """How many of a fresh proposal of ``num_proposed`` drafts in ``bucket`` to check."""
        if not _shares_engine_counts(request):
            batch_size = 1  # as in num_spec_tokens
        self._requests.setdefault(request.request_id, _RequestHistory()).pending_bucket = bucket
        if not self.adaptive or num_proposed <= 1:
            return num_proposed  # a single draft is the probe, or was already judged by num_spec_tokens
        return min(num_proposed, self._best(request, bucket, batch_size))

    def record(self, request: Request, num_drafts: int, num_accepted: int) -> None:
        """The outcome of checking ``num_drafts`` drafts of ``request``: the first ``num_accepted`` kept."""
        if num_drafts == 0:
            return
        history = self._requests.setdefault(request.request_id, _RequestHistory())
        if history.probing:
            history.probing = False
            self._after_probe(request, history, kept=num_accepted > 0)
        bucket = history.pending_bucket
        size = self.num_speculative_tokens
        history.counts.setdefault(bucket, HazardCounts.empty(size)).record(num_drafts, num_accepted)
        if not _shares_engine_counts(request):
            pool = history.pooled.setdefault(self._is_draft_model(bucket), HazardCounts.empty(size))
            pool.record(num_drafts, num_accepted)
        self._engine_counts.setdefault(bucket, HazardCounts.empty(size)).record(num_drafts, num_accepted, ENGINE_DECAY)

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            self._requests.pop(request_id, None)

    def acceptance(self, request: Request, bucket: int) -> list[float]:
        """Estimated chance that draft j + 1 is accepted when drafts 1..j were, for j < K."""
        history = self._requests.get(request.request_id)
        if _shares_engine_counts(request):
            broader = self._engine_counts.get(bucket)
        else:
            broader = history.pooled.get(self._is_draft_model(bucket)) if history else None
        own = history.counts.get(bucket) if history else None
        rates = []
        for j in range(self.num_speculative_tokens):
            rate = PRIOR_ACCEPTANCE
            if broader is not None:
                rate = (broader.accepted[j] + PRIOR_WEIGHT * rate) / (broader.reached[j] + PRIOR_WEIGHT)
            if own is not None:
                rate = (own.accepted[j] + REQUEST_WEIGHT * rate) / (own.reached[j] + REQUEST_WEIGHT)
            rates.append(rate)
        return rates

    def _is_draft_model(self, bucket: int) -> bool:
        """Whether drafts in ``bucket`` came from a draft model (the only proposer, or the one behind a lookup)."""
        return self.proposer_cost > 0 and bucket == DRAFT_MODEL_BUCKET

    def _best(self, request: Request, bucket: int, batch_size: int, proposer_cost: float = 0.0) -> int:
        draft_cost = batch_size / (self.fixed_cost_rows + batch_size) + proposer_cost
        return best_num_drafts(self.acceptance(request, bucket), self.num_speculative_tokens, draft_cost)
