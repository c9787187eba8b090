"""SamplingParams: what a request asks of the sampler, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import InvalidSamplingParamsError

_GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Constrain a request's output to a grammar (vLLM's ``structured_outputs``): set exactly one field.

    ``json`` is a JSON Schema as a string (serialized once, so equal schemas share one compiled grammar);
    ``json_object`` any JSON object; ``regex`` a regular expression the whole output matches; ``choice`` one of
    the given strings; ``grammar`` a Lark grammar (llguidance's dialect, which also reads most GBNF). ``strict``
    (JSON Schemas): True refuses a schema keyword the backend does not implement; False drops it, so the output
    may not meet that keyword (OpenAI's non-strict mode).
    """

    json: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.choice, str):
            raise InvalidSamplingParamsError("structured_outputs.choice must be a list of strings, not one string")
        if self.choice is not None and not isinstance(self.choice, tuple):
            object.__setattr__(self, "choice", tuple(self.choice))
        for name in ("json_object", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidSamplingParamsError(f"structured_outputs.{name} must be true or false")
        kinds = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        kinds += ["json_object"] if self.json_object else []
        if len(kinds) != 1:
            raise InvalidSamplingParamsError(
                f"structured_outputs takes exactly one of json, json_object, regex, choice, grammar; got {kinds or 'none'}"
            )
        if self.choice is not None and (not self.choice or any(not isinstance(c, str) or not c for c in self.choice)):
            raise InvalidSamplingParamsError("structured_outputs.choice must be a non-empty list of non-empty strings")
        for name in ("json", "regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidSamplingParamsError(f"structured_outputs.{name} must be a non-empty string")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters, named and defaulted as vLLM names them."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the model's context
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token, besides the sampled one
    # Number of top logprobs per prompt token, besides the prompt token itself (None: off). Computed from the raw
    # logits during prefill; a request that asks computes its whole prompt (no prefix-cache hit).
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    # Added to the token's logit before sampling (OpenAI's logit_bias, in [-100, 100]); a dict is accepted and
    # kept as sorted (token id, bias) pairs so the params stay hashable.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # vLLM's: the only token ids that may be sampled (EOS included only if listed), and words never to generate
    # (each word's last token is banned wherever the output so far ends with the rest of it).
    allowed_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists/strings for convenience while keeping the dataclass hashable and immutable.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias.items())))
        elif not isinstance(self.logit_bias, tuple):
            object.__setattr__(self, "logit_bias", tuple(self.logit_bias or ()))
        if self.allowed_token_ids is not None and not isinstance(self.allowed_token_ids, tuple):
            object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        if isinstance(self.bad_words, str):
            raise InvalidSamplingParamsError("bad_words must be a list of strings").with_param("bad_words")
        if not isinstance(self.bad_words, tuple):
            object.__setattr__(self, "bad_words", tuple(self.bad_words or ()))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidSamplingParamsError(msg)

        if not isinstance(self.n, int) or self.n < 1:
            bad(f"n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0.0:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0.0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            bad(f"logprobs must be an integer in [0, 20], got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (
            not isinstance(self.prompt_logprobs, int) or not 0 <= self.prompt_logprobs <= 20
        ):
            raise InvalidSamplingParamsError(
                f"prompt_logprobs must be an integer in [0, 20], got {self.prompt_logprobs!r}"
            ).with_param("prompt_logprobs")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop strings must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids must be non-negative integers")
        if self.seed is not None and not isinstance(self.seed, int):
            bad(f"seed must be an integer, got {self.seed!r}")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            bad("structured_outputs must be a StructuredOutputsParams")
        for token_id, bias in self.logit_bias:
            if not isinstance(token_id, int) or token_id < 0:
                raise InvalidSamplingParamsError(
                    f"logit_bias keys must be token ids (integers >= 0), got {token_id!r}").with_param("logit_bias")
            if not isinstance(bias, int | float) or not -100.0 <= bias <= 100.0:
                raise InvalidSamplingParamsError(
                    f"logit_bias values must be in [-100, 100], got {bias!r} for token {token_id}"
                ).with_param("logit_bias")
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids or any(not isinstance(t, int) or t < 0 for t in self.allowed_token_ids)
        ):
            raise InvalidSamplingParamsError(
                "allowed_token_ids must be a non-empty list of token ids").with_param("allowed_token_ids")
        if any(not isinstance(w, str) or not w.strip() for w in self.bad_words):
            raise InvalidSamplingParamsError("bad_words must be non-empty strings").with_param("bad_words")
        if self.structured_outputs is not None and (self.min_tokens > 0 or self.ignore_eos):
            bad("min_tokens and ignore_eos cannot be combined with structured_outputs (the grammar decides where "
                "the output ends)")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )


__all__ = ["SamplingParams", "StructuredOutputsParams"]
