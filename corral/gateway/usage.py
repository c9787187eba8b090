"""What the gateway reads of an answer for limits and audit: the backend's token ``usage`` and the output text,
from a JSON body or from the events of an SSE stream.

A stream carries usage only when the request asks for it (``stream_options.include_usage``): corral serve, like
OpenAI, then sends one last chunk with no choices and the usage before ``[DONE]``. The gateway asks for it when it
needs the counts (``ask_for_usage``) and strips that chunk again for a client that did not ask (stream_tap.py).

The output is per choice: a completion's ``text``, a chat message's ``content`` (streamed deltas concatenated),
and its tool calls when it has any. ``Answer.output`` is one choice's output, or the list of them for ``n > 1``;
its SHA-256 goes in the audit record, so a streamed and a non-streamed answer of the same text hash alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.gateway.token_limits import prompt_chars

# The gateway has no tokenizer. English BPE averages about 4 characters per token; the estimate is reserved
# against tokens per minute and never refunded (limits.py), so it should stay at or under the real count.
CHARS_PER_TOKEN = 4


def estimated_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A low estimate of the prompt's tokens: its characters / 4 (chat: the messages' contents)."""
    return prompt_chars(dict(body)) // CHARS_PER_TOKEN


def asked_for_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def ask_for_usage(body: dict[str, Any]) -> dict[str, Any]:
    """The body to forward so that a stream ends with its usage (a new dict; ``body`` when it already asks)."""
    if asked_for_usage(body):
        return body
    options = body.get("stream_options")
    return {**body, "stream_options": {**(options if isinstance(options, Mapping) else {}), "include_usage": True}}


def prompt_of(body: Mapping[str, Any]) -> Any:
    """The prompt as the audit hashes it: a completion's ``prompt``, or a chat's ``messages``."""
    return body.get("messages") if "messages" in body else body.get("prompt")


@dataclass
class _ChoiceOutput:
    text: str = ""
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> {name, arguments}
    function_call: dict[str, str] | None = None  # the legacy form of one call: {name, arguments}

    def add_function_call(self, call: Any) -> None:
        if isinstance(call, Mapping):
            merged = self.function_call = self.function_call or {"name": "", "arguments": ""}
            merged["name"] += call.get("name") or ""
            merged["arguments"] += call.get("arguments") or ""

    def add_tool_calls(self, calls: Any, streamed: bool) -> None:
        if not isinstance(calls, list):
            return
        for position, call in enumerate(calls):
            if not isinstance(call, Mapping):
                continue
            index = call.get("index", position) if streamed else position
            function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
            merged = self.tool_calls.setdefault(index if isinstance(index, int) else position,
                                                {"name": "", "arguments": ""})
            merged["name"] += function.get("name") or ""
            merged["arguments"] += function.get("arguments") or ""

    def output(self) -> str | dict[str, Any]:
        if not self.tool_calls and self.function_call is None:
            return self.text
        output: dict[str, Any] = {"content": self.text}
        if self.tool_calls:
            output["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            output["function_call"] = self.function_call
        return output


@dataclass
class Answer:
    """Usage and output of one answer, filled from a body (``add_body``) or chunk by chunk (``add_chunk``)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    choices: dict[int, _ChoiceOutput] = field(default_factory=dict)
    events: int = 0  # stream events that carried choices: a floor on the tokens of a stream cut short

    @property
    def output(self) -> str | dict[str, Any] | list[Any] | None:
        if not self.choices:
            return None
        outputs = [self.choices[i].output() for i in sorted(self.choices)]
        return outputs[0] if len(outputs) == 1 else outputs

    def add_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            self.prompt_tokens, self.completion_tokens = prompt, completion

    def add_body(self, body: Any) -> None:
        """A non-streaming response's JSON (anything else is ignored)."""
        if not isinstance(body, Mapping):
            return
        self.add_usage(body.get("usage"))
        self._add_choices(body.get("choices") or [], "message", streamed=False)

    def add_chunk(self, chunk: Any) -> None:
        """One parsed stream event."""
        if not isinstance(chunk, Mapping):
            return
        self.add_usage(chunk.get("usage"))
        choices = chunk.get("choices") or []
        if choices:
            self.events += 1
        self._add_choices(choices, "delta", streamed=True)

    def _add_choices(self, choices: Any, part: str, streamed: bool) -> None:
        """A chat choice's text and tool calls are under ``part`` (``message`` or ``delta``), a completion's
        text under ``text``."""
        for position, choice in enumerate(choices):
            if not isinstance(choice, Mapping):
                continue
            index = choice.get("index", position)
            out = self.choices.setdefault(index if isinstance(index, int) else position, _ChoiceOutput())
            content = choice.get(part)
            if isinstance(content, Mapping):
                out.text += content.get("content") or ""
                out.add_tool_calls(content.get("tool_calls"), streamed=streamed)
                out.add_function_call(content.get("function_call"))
            elif isinstance(choice.get("text"), str):
                out.text += choice["text"]

    def tokens_used(self, estimated_prompt: int) -> tuple[int, int]:
        """(prompt, completion) tokens to charge: the usage when the backend gave it, else the estimate and one
        completion token per stream event relayed (a stream cut short)."""
        if self.prompt_tokens is not None and self.completion_tokens is not None:
            return self.prompt_tokens, self.completion_tokens
        return estimated_prompt, self.events


def answer_of_body(body: bytes) -> Answer:
    """Usage and output of a JSON response body (an empty Answer for anything that is not JSON)."""
    answer = Answer()
    try:
        answer.add_body(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        pass
    return answer
