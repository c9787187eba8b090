"""OutputProcessor: token ids -> text, stop strings, logprobs and RequestOutputs.

Runs after each step. Stop strings can only be seen in text, so a match here finishes the
completion and reports its child id back for the engine to abort in the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.engine.batch import EngineCoreOutput, SampledToken
from corral.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestOutput
from corral.sample.params import SamplingParams
from corral.text.detokenizer import IncrementalDetokenizer
from corral.text.stop import StopChecker
from corral.text.tokenizer import Tokenizer


@dataclass
class _Completion:
    output: CompletionOutput
    detokenizer: IncrementalDetokenizer
    stop_checker: StopChecker | None


@dataclass
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: dict[str, _Completion] = field(default_factory=dict)  # by child request id
    num_cached_tokens: int = 0
    prompt_logprobs: PromptLogprobs | None = None

    @property
    def finished(self) -> bool:
        return all(c.output.finished for c in self.completions.values())

    def to_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[c.output for c in self.completions.values()],
            finished=self.finished,
            num_cached_tokens=self.num_cached_tokens,
            prompt_logprobs=self.prompt_logprobs,
        )


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}
        self._parent_of: dict[str, str] = {}

    def has_request(self, request_id: str) -> bool:
        return request_id in self._requests

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
    ) -> None:
        state = _RequestState(request_id, prompt, prompt_token_ids, params)
        for index, child_id in enumerate(child_ids):
            state.completions[child_id] = _Completion(
                output=CompletionOutput(
                    index=index, text="", token_ids=[], logprobs=[] if params.logprobs is not None else None
                ),
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer, prompt_token_ids, skip_special_tokens=params.skip_special_tokens
                ),
                stop_checker=StopChecker(params.stop, params.include_stop_str_in_output) if params.stop else None,
            )
            self._parent_of[child_id] = request_id
        self._requests[request_id] = state

    def abort(self, request_id: str) -> list[str]:
        """Forget a request; returns its child ids (for the core to abort)."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return []
        for child_id in state.completions:
            self._parent_of.pop(child_id, None)
        return list(state.completions)

    def process(self, core_outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns the updated requests' outputs and the child ids that a stop string finished."""
        touched: dict[str, _RequestState] = {}
        stopped: list[str] = []
        for core_output in core_outputs:
            parent_id = self._parent_of.get(core_output.request_id)
            if parent_id is None:
                continue  # aborted by the caller after the step was scheduled
            state = self._requests[parent_id]
            completion = state.completions[core_output.request_id]
            if completion.output.index == 0:
                state.num_cached_tokens = core_output.num_cached_tokens
            if core_output.prompt_logprobs is not None and state.prompt_logprobs is None:
                state.prompt_logprobs = [None, *map(self._logprobs, core_output.prompt_logprobs)]
            if self._update(completion, core_output) and not core_output.finished:
                stopped.append(core_output.request_id)
            touched[parent_id] = state
        outputs = []
        for state in touched.values():
            outputs.append(state.to_output())
            if state.finished:
                self.abort(state.request_id)
        return outputs, stopped

    def _update(self, completion: _Completion, core_output: EngineCoreOutput) -> bool:
        """Apply one step's tokens; True if a stop string matched."""
        output = completion.output
        if output.finished:
            return False
        output.token_ids.extend(core_output.new_token_ids)
        output.num_draft_tokens = core_output.num_draft_tokens
        output.num_accepted_tokens = core_output.num_accepted_tokens
        if output.logprobs is not None:
            output.logprobs.extend(self._logprobs(s) for s in core_output.new_logprobs)
        delta = completion.detokenizer.push(core_output.new_token_ids)
        if core_output.finished:
            delta += completion.detokenizer.flush()
            output.finish_reason = core_output.finish_reason
            output.stop_reason = core_output.stop_reason
        output.text = completion.detokenizer.text
        checker = completion.stop_checker
        if checker is not None:
            match = checker.check(output.text, len(delta))
            if match is not None:
                output.text = match.text
                output.finish_reason = "stop"
                output.stop_reason = match.stop_str
                return True
            if not output.finished:
                # Never show what may turn out to be the start of a stop string (streams emit text deltas).
                output.text = output.text[: len(output.text) - checker.num_held_back(output.text)]
        return False

    def _logprobs(self, sampled: SampledToken) -> dict[int, Logprob]:
        assert sampled.logprob_token_ids is not None and sampled.logprobs is not None
        entries: dict[int, Logprob] = {}
        for column, (token_id, logprob) in enumerate(zip(sampled.logprob_token_ids, sampled.logprobs)):
            rank = sampled.rank if column == 0 else column
            if token_id not in entries:
                entries[token_id] = Logprob(logprob, rank, self.tokenizer.decode([token_id], False))
        return entries
