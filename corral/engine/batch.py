"""The seams of one engine step: what the scheduler decided, and what the model runner produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.engine.request import Request


@dataclass
class ScheduledRequest:
    """``num_new_tokens`` tokens of ``request`` to compute this step, starting at ``num_computed_tokens``."""

    request: Request
    num_computed_tokens: int
    num_new_tokens: int
    block_ids: list[int]  # the request's block table (covers the new tokens)
    # Draft tokens checked this step: the last ``len(spec_token_ids)`` of the new tokens.
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        """True when this step reaches the request's last known token, so its next token is sampled."""
        return self.num_computed_tokens + self.num_new_tokens == self.request.num_tokens + len(self.spec_token_ids)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)
    # Requests that left the engine since the last step: the runner drops their per-request state.
    finished_request_ids: list[str] = field(default_factory=list)

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class SampledToken:
    """The runner's result for one request that sampled this step."""

    token_id: int
    # Column 0 is the sampled token, then the top-N; None unless the request asked for logprobs.
    logprob_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    rank: int | None = None


@dataclass
class ModelRunnerOutput:
    # The tokens each sampling request emits this step: one, or with speculation the accepted drafts then
    # the target's own next token.
    sampled: dict[str, list[SampledToken]] = field(default_factory=dict)
    # Requests with prompt_logprobs: one row per prompt position computed this step, in order; row p's
    # ``token_id`` is prompt token p + 1, scored by the logits at position p.
    prompt_logprobs: dict[str, list[SampledToken]] = field(default_factory=dict)


@dataclass
class SpecDecodeStats:
    """Speculative decoding totals: drafts checked, draft tokens proposed and accepted, and tokens emitted by
    those checks (accepted drafts plus the target's own token after them)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


@dataclass
class EngineCoreOutput:
    """What a step did to one request: its new token (if any) and whether it finished."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[SampledToken] = field(default_factory=list)
    # Set once, with the request's first sampled token, when it asked for prompt_logprobs.
    prompt_logprobs: list[SampledToken] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_draft_tokens: int = 0  # speculative draft tokens checked for this request so far
    num_accepted_tokens: int = 0  # of those, accepted

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
