"""Typed exceptions for everything a user can cause. Internal invariants use ``assert``."""

from __future__ import annotations


class CorralError(Exception):
    """Base class of every error corral raises on purpose. ``param``: the request field at fault, where one is
    (the server puts it in the OpenAI error's ``param``); ``code``: OpenAI's machine-readable ``code`` for this
    kind of error, where it has one (the server otherwise sends the HTTP status phrase)."""

    param: str | None = None
    code: str | None = None

    def with_param(self, param: str) -> CorralError:
        self.param = param
        return self


class ModelLoadError(CorralError):
    """The model file or directory is missing, unreadable or malformed."""


class UnsupportedModelError(ModelLoadError):
    """The architecture, tensor type or quantization is not supported."""


class InvalidSamplingParamsError(CorralError, ValueError):
    """A sampling parameter is out of range or inconsistent with another."""


class PromptTooLongError(CorralError, ValueError):
    """The prompt (plus the tokens to generate) does not fit the model's context."""

    code = "context_length_exceeded"  # OpenAI's; the gateway's context-window fallback keys on it

    def __init__(self, num_prompt_tokens: int, max_model_len: int, counted_all: bool = True):
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len
        count = num_prompt_tokens if counted_all else f"at least {num_prompt_tokens}"
        super().__init__(f"prompt has {count} tokens, but the model's context is {max_model_len} tokens")


class InvalidRequestError(CorralError, ValueError):
    """A request is malformed (empty prompt, token id out of vocabulary, duplicate id, ...)."""


class ChatTemplateError(CorralError, ValueError):
    """The chat template is missing or failed to render the given messages."""


class ConfigError(CorralError, ValueError):
    """An engine or cache configuration value is invalid."""


class QuantizationError(CorralError, ValueError):
    """A weight cannot be quantized as asked, or a quantization config is unsupported or corrupt."""


class GrammarError(CorralError, ValueError):
    """A structured-output spec (JSON Schema, regex, grammar) is invalid, unsupported, or took too long to compile."""
