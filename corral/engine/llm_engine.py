"""LLMEngine: text in, RequestOutputs out. Validates and tokenizes requests, fans ``n`` out into
child sequences, drives EngineCore and turns its token ids into text through the output processor."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from corral.engine.core import EngineCore
from corral.engine.output_processor import OutputProcessor
from corral.engine.request import Request
from corral.errors import GrammarError, InvalidRequestError, PromptTooLongError
from corral.outputs import RequestOutput
from corral.sample.params import SamplingParams
from corral.structured.backend import CompiledGrammar
from corral.structured.cache import GrammarCache
from corral.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt tokenized before it reaches the engine (the server does it on a worker thread, so a long prompt
    never holds up a step), with its text for ``echo``."""

    text: str | None
    token_ids: list[int]


PromptType = str | Sequence[int] | TokenizedPrompt


class LLMEngine:
    def __init__(
        self,
        core: EngineCore,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_model_len: int,
        eos_token_ids: frozenset[int],
        grammars: GrammarCache | None = None,
    ):
        self.core = core
        self.grammars = grammars  # None: no grammar backend installed, structured output is refused
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.output_processor = OutputProcessor(tokenizer)
        self._ids = itertools.count()

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams, priority: int = 0,
        grammar: CompiledGrammar | None = None,
    ) -> None:
        """Validate and queue a request. Raises a CorralError subclass, changing nothing, on bad input. ``grammar``:
        ``params.structured_outputs`` compiled already (else it is compiled here, through the cache)."""
        if self.output_processor.has_request(request_id):
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        prompt_text, prompt_ids = self._tokenize(prompt)
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLongError(len(prompt_ids), self.max_model_len)
        child_ids = [request_id] if params.n == 1 else [f"{i}_{request_id}" for i in range(params.n)]
        outside = [t for t, _ in params.logit_bias if t >= self.vocab_size]
        if outside:
            raise InvalidRequestError(
                f"logit_bias token ids {outside[:5]} are outside the vocabulary of {self.vocab_size}"
            ).with_param("logit_bias")
        outside = [t for t in params.allowed_token_ids or () if t >= self.vocab_size]
        if outside:
            raise InvalidRequestError(
                f"allowed_token_ids {outside[:5]} are outside the vocabulary of {self.vocab_size}"
            ).with_param("allowed_token_ids")
        if grammar is None:
            grammar = self._compile_grammar(params)
        bad_words = self._bad_words_token_ids(params.bad_words)
        self.output_processor.add_request(request_id, prompt_text, prompt_ids, params, child_ids)
        for index, child_id in enumerate(child_ids):
            # Children of n > 1 share the prompt's KV blocks through the prefix cache; seeded ones differ. The
            # first child alone computes the prompt's logprobs (the others may then reuse its cached blocks).
            child_params = params if params.n == 1 else replace(
                params, n=1, seed=None if params.seed is None else params.seed + index,
                prompt_logprobs=params.prompt_logprobs if index == 0 else None,
            )
            self.core.add_request(
                Request(
                    request_id=child_id,
                    prompt_token_ids=prompt_ids,
                    sampling_params=child_params,
                    eos_token_ids=self.eos_token_ids,
                    max_model_len=self.max_model_len,
                    priority=priority,
                    grammar=None if grammar is None else grammar.matcher(),
                    bad_words_token_ids=bad_words,
                )
            )

    def _compile_grammar(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's compiled grammar (cached: the server compiles it before the request gets here)."""
        if params.structured_outputs is None:
            return None
        if self.grammars is None:
            raise GrammarError("structured output needs the llguidance package, which is not installed")
        return self.grammars.compile(params.structured_outputs)

    def _bad_words_token_ids(self, bad_words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Each bad word as the tokens that spell it, alone and after a space (how it appears mid-text)."""
        spellings = {
            tuple(self.tokenizer.encode(text, add_special_tokens=False))
            for word in bad_words for text in (word, " " + word.lstrip())
        }
        return tuple(sorted(s for s in spellings if s))

    def abort_request(self, request_id: str) -> None:
        for child_id in self.output_processor.abort(request_id):
            self.core.abort_request(child_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        core_outputs = self.core.step()
        outputs, stopped_child_ids = self.output_processor.process(core_outputs)
        for child_id in stopped_child_ids:  # stop strings are found on text, after the step
            self.core.abort_request(child_id)
        return outputs

    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, TokenizedPrompt):
            text, prompt = prompt.text, prompt.token_ids
            return text, self._tokenize(prompt)[1]
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt must not be empty")
            return prompt, self.tokenizer.encode(prompt)
        prompt_ids = list(prompt)
        if not prompt_ids:
            raise InvalidRequestError("prompt must not be empty")
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in prompt_ids):
            raise InvalidRequestError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        return None, prompt_ids
