"""Request: one sequence's bookkeeping inside the engine. Plain Python, no torch."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral.sample.params import SamplingParams
from corral.structured.backend import GrammarMatcher

if TYPE_CHECKING:
    from corral.engine.batch import SampledToken


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.is_finished else None


_FINISHED = frozenset(
    {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED}
)


@dataclass(eq=False)
class Request:
    """A sequence the engine is computing.

    The scheduler closes the gap between ``num_computed_tokens`` (tokens whose K/V is in the
    cache) and ``num_tokens`` (prompt + generated). Prefill, chunked prefill, recompute after
    preemption and decode are all the same rule.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_model_len: int = 2048
    priority: int = 0  # lower runs first, as in vLLM
    arrival_time: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    # Speculative decoding: draft tokens proposed for the next step (not part of the sequence until the
    # target model accepts them), and this request's running totals.
    spec_token_ids: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # Structured output: where the output stands in its grammar (advanced by each appended token).
    grammar: GrammarMatcher | None = None
    grammar_failed: bool = False
    # bad_words as token sequences (the engine tokenizes them): each one's last token is banned after the rest.
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    # prompt_logprobs: the rows computed so far (row p scores prompt token p + 1), kept until they go out with
    # the first sampled token. They survive preemption, so a recompute never scores a position twice.
    prompt_logprob_rows: list[SampledToken] = field(default_factory=list)
    prompt_logprobs_sent: bool = False

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        params = self.sampling_params
        room = self.max_model_len - len(self.prompt_token_ids)
        self.max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def needs_prompt_logprobs(self) -> bool:
        """True while some prompt position's logprobs are still to compute (so no prefix-cache hit may skip it)."""
        return (
            self.sampling_params.prompt_logprobs is not None
            and len(self.prompt_logprob_rows) < self.num_prompt_tokens - 1
        )

    def prompt_logprob_positions(self, start: int, end: int) -> range:
        """The positions in ``[start, end)`` whose logits score a prompt token not scored yet."""
        if self.sampling_params.prompt_logprobs is None:
            return range(0)
        return range(max(start, len(self.prompt_logprob_rows)), min(end, self.num_prompt_tokens - 1))

    def take_prompt_logprobs(self) -> list[SampledToken] | None:
        """The prompt's logprob rows, the first time they are asked for once all are computed; else None."""
        if self.sampling_params.prompt_logprobs is None or self.prompt_logprobs_sent or self.needs_prompt_logprobs:
            return None
        self.prompt_logprobs_sent = True
        return self.prompt_logprob_rows

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if self.grammar is not None and not self.grammar.accept(token_id):
            # Only a matcher in an error state (a parser limit hit mid-output) refuses a token its own mask
            # allowed; the request ends here, as aborted, rather than go on unconstrained.
            self.grammar_failed = True

    def check_stop(self) -> RequestStatus | None:
        """The finished status the last appended token puts this request in, if any."""
        params = self.sampling_params
        last = self.output_token_ids[-1]
        if self.grammar_failed:  # the matcher logged why
            return RequestStatus.FINISHED_ABORTED
        if self.grammar is not None and self.grammar.is_terminated():
            self.stop_reason = None
            return RequestStatus.FINISHED_LENGTH if self.grammar.closed_by_budget else RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and last in self.eos_token_ids:
                self.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if last in params.stop_token_ids:
                self.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= self.max_tokens or self.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def max_num_spec_tokens(self, limit: int) -> int:
        """Draft tokens worth checking next step: at most ``limit``, and fewer than the tokens this request may
        still emit (a check emits the accepted drafts plus one; ``max_tokens`` already fits the context)."""
        return max(0, min(limit, self.max_tokens - self.num_output_tokens - 1))

    def banned_token_ids(self, pending: Sequence[int] = ()) -> tuple[int, ...]:
        """Tokens the sampler must not produce after the output and then ``pending`` (draft tokens, when checking
        drafts): EOS and stop tokens before ``min_tokens``, and the last token of each bad word whose other tokens
        the output ends with."""
        params = self.sampling_params
        banned: tuple[int, ...] = ()
        if self.num_output_tokens + len(pending) < params.min_tokens:
            banned = tuple(self.eos_token_ids) + params.stop_token_ids
        if not self.bad_words_token_ids:
            return banned
        longest = max(len(word) for word in self.bad_words_token_ids) - 1
        tail = (self.output_token_ids[-longest:] if longest else []) + list(pending)
        return banned + tuple(
            word[-1] for word in self.bad_words_token_ids
            if len(word) == 1 or (len(tail) >= len(word) - 1 and tail[len(tail) - len(word) + 1 :] == list(word[:-1]))
        )
