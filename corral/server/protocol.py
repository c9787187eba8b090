"""The OpenAI wire format (the parts corral serves), as pydantic models."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from corral.errors import InvalidSamplingParamsError
from corral.sample.params import SamplingParams


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields of OpenAI's and vLLM's request bodies that change nothing this server computes: accepted, unused.
NO_EFFECT_FIELDS = frozenset({
    "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
})
# Fields read from the request's extras by server/structured.py (structured output).
STRUCTURED_OUTPUT_FIELDS = frozenset({
    "response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend",
})
# Fields that would change the output and are not implemented yet, each with the values that mean "off"
# (accepted). Any other value is refused with a 400 naming the field, never silently ignored.
NOT_IMPLEMENTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "tools": (None, []), "tool_choice": (None, "none"), "parallel_tool_calls": (None, True, False),
    "best_of": (None, 1), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,), "web_search_options": (None,),
    "logits_processors": (None, []), "truncate_prompt_tokens": (None,),
}

# OpenAI's older names for what a newer field does, refused with a pointer to it.
DEPRECATED_FIELDS = {"functions": "tools", "function_call": "tool_choice"}


class _SamplingRequest(BaseModel):
    """Fields shared by completions and chat. Unknown fields are kept so that ``refused_field`` can name them."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    logit_bias: dict[str, float] | None = None  # token id (as OpenAI sends it, a string) -> bias in [-100, 100]
    allowed_token_ids: list[int] | None = None  # vLLM's
    bad_words: list[str] | None = None  # vLLM's
    prompt_logprobs: int | None = None  # vLLM's extra: top logprobs per prompt token (range checked by SamplingParams)
    # vLLM's extra: scheduling priority, lower runs first (waiting requests are admitted in this order, and the
    # last of it is preempted first when the KV cache runs dry).
    priority: StrictInt = 0  # an integer: true, "3" or 2.0 are refused, not read as one
    user: str | None = None

    def sampling_params(self, max_tokens: int | None, num_logprobs: int | None) -> SamplingParams:
        """Raises InvalidSamplingParamsError (a 400) on out-of-range values."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            n=self.n,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=num_logprobs,
            logit_bias=self.token_biases(),
            allowed_token_ids=self.allowed_token_ids,
            bad_words=tuple(self.bad_words or ()),
            prompt_logprobs=self.prompt_logprobs,
        )

    def token_biases(self) -> dict[int, float]:
        biases = {}
        for key, bias in (self.logit_bias or {}).items():
            if not key.lstrip("-").isdigit():
                raise InvalidSamplingParamsError(f"logit_bias keys must be token ids, got {key!r}").with_param("logit_bias")
            biases[int(key)] = bias
        return biases

    def refused_field(self) -> tuple[str, str] | None:
        """(field, why) for the first field this server would otherwise have to ignore, or None."""
        for name, value in (self.model_extra or {}).items():
            if name in NO_EFFECT_FIELDS or name in STRUCTURED_OUTPUT_FIELDS:
                continue
            if name not in NOT_IMPLEMENTED_FIELDS and name not in DEPRECATED_FIELDS:
                return name, f"unrecognized request argument supplied: {name}"
            if name in DEPRECATED_FIELDS and value is not None:
                return name, f"{name} is deprecated: use {DEPRECATED_FIELDS[name]}"
            if name in NOT_IMPLEMENTED_FIELDS and value not in NOT_IMPLEMENTED_FIELDS[name]:
                return name, f"{name} is not supported by this server yet; leave it out (or null)"
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None  # fill in the middle, where the model has the tokens for it
    max_tokens: int | None = Field(default=None, ge=0)  # 0: with echo only, the prompt alone (create_completion)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    add_generation_prompt: bool = True
    # tool calling (server/tools.py validates them, naming the field)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None

    def refused_field(self) -> tuple[str, str] | None:
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        return super().refused_field()


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "corral"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
