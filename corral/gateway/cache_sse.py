"""A cached answer is stored in its non-streaming shape; these turn a relayed SSE stream into that shape and back.

``assemble_from_sse`` merges the chunks of an OpenAI stream (``/v1/completions`` or ``/v1/chat/completions``)
into the response the same request would have got without ``stream``: per choice index, the texts (or chat
``delta`` strings) concatenated, tool-call deltas merged by their index, logprobs lists concatenated, the last
``finish_reason`` and ``stop_reason``, the usage. ``replay_as_sse`` renders a stored response as a stream ending
with ``data: [DONE]``. ``replayable`` is the test the cache applies before storing anything: a response is
stored only if ``assemble_from_sse(replay_as_sse(r)) == r``, so a shape these functions do not know (an unknown
field, vLLM's ``prompt_logprobs``, a stream cut short or ending in an error event) is never cached, rather than
replayed with something missing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from corral.gateway.cache_key import is_chat


class NotReplayable(ValueError):
    """The stream or response has a shape the cache cannot replay faithfully; it is not stored."""


# Top-level fields copied from the first chunk to the response and onto every replayed chunk.
_SCALAR_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# Chunk fields that are framing only (OpenAI's stream padding): dropped.
_FRAMING_FIELDS = frozenset({"obfuscation"})
# Chat delta fields that are strings concatenated across chunks.
_DELTA_STRINGS = ("content", "reasoning_content", "refusal")
_CHAT_CHOICE_FIELDS = frozenset({"index", "delta", "finish_reason", "stop_reason", "logprobs"})
_TEXT_CHOICE_FIELDS = frozenset({"index", "text", "finish_reason", "stop_reason", "logprobs"})


def sse_events(chunks: Iterable[bytes]) -> Iterator[str]:
    """The ``data:`` payloads of an SSE byte stream, however its bytes were split into chunks."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if lines:
                yield b"\n".join(lines).decode()
    if buffer.strip():
        raise NotReplayable("the stream ends inside an event")


def _merge_logprobs(acc: Any, new: Any) -> Any:
    if new is None:
        return acc
    if acc is None:
        return copy.deepcopy(new)
    if not isinstance(acc, dict) or not isinstance(new, dict):
        raise NotReplayable("logprobs that are not objects")
    for name, value in new.items():
        if isinstance(acc.get(name), list) and isinstance(value, list):
            acc[name] = acc[name] + value
        elif acc.get(name) is None:
            acc[name] = copy.deepcopy(value)
        elif value is not None:
            raise NotReplayable(f"logprobs field {name!r} that is not a list")
    return acc


def _merge_tool_calls(calls: dict[int, dict], deltas: Any) -> None:
    if not isinstance(deltas, list):
        raise NotReplayable("tool_calls that are not a list")
    for delta in deltas:
        if not isinstance(delta, dict) or set(delta) - {"index", "id", "type", "function"}:
            raise NotReplayable("a tool call delta with unknown fields")
        index = delta.get("index", len(calls))
        if not isinstance(index, int):
            raise NotReplayable("a tool call delta without an integer index")
        call = calls.setdefault(index, {"id": None, "type": None,
                                                                  "function": {"name": None, "arguments": ""}})
        for name in ("id", "type"):
            if delta.get(name) is not None:
                call[name] = delta[name]
        function = delta.get("function") or {}
        if not isinstance(function, dict) or set(function) - {"name", "arguments"}:
            raise NotReplayable("a tool call function with unknown fields")
        if function.get("name") is not None:
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""


class _Choice:
    """One choice's state while its chunks arrive."""

    def __init__(self, index: int):
        self.index = index
        self.fields: dict[str, Any] = {}  # finish_reason, stop_reason, logprobs: keys as the stream had them
        self.text: str | None = None  # completions
        self.message: dict[str, Any] = {}  # chat: role and the delta strings
        self.tool_calls: dict[int, dict] | None = None

    def add(self, choice: Mapping[str, Any], chat: bool) -> None:
        unknown = set(choice) - (_CHAT_CHOICE_FIELDS if chat else _TEXT_CHOICE_FIELDS)
        if unknown:
            raise NotReplayable(f"a choice with fields it cannot replay: {sorted(unknown)}")
        for name in ("finish_reason", "stop_reason"):
            if name in choice and (choice[name] is not None or name not in self.fields):
                self.fields[name] = choice[name]
        if "logprobs" in choice:
            self.fields["logprobs"] = _merge_logprobs(self.fields.get("logprobs"), choice["logprobs"])
        if not chat:
            if choice.get("text") is not None:
                self.text = (self.text or "") + choice["text"]
            return
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict) or set(delta) - {"role", "tool_calls", *_DELTA_STRINGS}:
            raise NotReplayable(f"a delta with unknown fields {sorted(delta)}")
        if delta.get("role") is not None:
            self.message["role"] = delta["role"]
        for name in _DELTA_STRINGS:
            if name in delta:
                part = delta[name]
                self.message[name] = part if self.message.get(name) is None else self.message[name] + (part or "")
        if "tool_calls" in delta:
            if delta["tool_calls"] is None:
                self.message.setdefault("tool_calls", None)
            else:
                self.message["tool_calls"] = []
                self.tool_calls = self.tool_calls if self.tool_calls is not None else {}
                _merge_tool_calls(self.tool_calls, delta["tool_calls"])

    def result(self, chat: bool) -> dict[str, Any]:
        if self.fields.get("finish_reason") is None:
            raise NotReplayable(f"choice {self.index} never finished")
        out: dict[str, Any] = {"index": self.index}
        if chat:
            message = dict(self.message)
            if self.tool_calls is not None:
                message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out["message"] = message
        else:
            out["text"] = self.text or ""
        return out | self.fields


def assemble_from_sse(chunks: Iterable[bytes], path: str) -> dict[str, Any]:
    """The non-streaming response of a complete SSE stream (bytes as relayed, split anyhow). Raises
    NotReplayable for a stream without ``data: [DONE]``, with an error event, or with fields it does not know."""
    chat = is_chat(path)
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage = None
    done = False
    for event in sse_events(chunks):
        if done:
            raise NotReplayable("events after [DONE]")
        if event.strip() == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(event)
        except ValueError as error:
            raise NotReplayable(f"an event that is not JSON: {error}") from error
        if not isinstance(chunk, dict) or "error" in chunk:
            raise NotReplayable("an error event")
        unknown = set(chunk) - {"object", "choices", "usage", *_SCALAR_FIELDS, *_FRAMING_FIELDS}
        if unknown:
            raise NotReplayable(f"chunk fields it cannot replay: {sorted(unknown)}")
        for name in _SCALAR_FIELDS:
            if name in chunk:
                head.setdefault(name, chunk[name])
        usage = chunk.get("usage") or usage
        choices_of_chunk = chunk.get("choices") or []
        if not isinstance(choices_of_chunk, list) or not all(isinstance(c, dict) for c in choices_of_chunk):
            raise NotReplayable("choices that are not a list of objects")
        for choice in choices_of_chunk:
            index = choice.get("index")
            if not isinstance(index, int):
                raise NotReplayable("a choice without an index")
            choices.setdefault(index, _Choice(index)).add(choice, chat)
    if not done:
        raise NotReplayable("the stream did not finish with [DONE]")
    response = {**head, "object": "chat.completion" if chat else "text_completion",
                "choices": [choices[i].result(chat) for i in sorted(choices)]}
    if usage is not None:
        response["usage"] = usage
    return response


def _event(head: dict[str, Any], choices: list, usage: Any = None) -> bytes:
    body = {**head, "choices": choices} | ({"usage": usage} if usage is not None else {})
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def _chat_choice_events(head: dict, choice: Mapping[str, Any]) -> Iterator[bytes]:
    """A choice as chunks: the message's strings (and logprobs) in one delta, one chunk per tool call, then the
    finish_reason (and stop_reason) in a chunk with an empty delta."""
    message = dict(choice.get("message") or {})
    calls = message.pop("tool_calls", None)
    if calls:
        message["tool_calls"] = []  # the key as the response has it; the calls follow one chunk each
    elif "tool_calls" in (choice.get("message") or {}):
        message["tool_calls"] = calls
    first = {"index": choice["index"], "delta": message, "finish_reason": None}
    if "logprobs" in choice:
        first["logprobs"] = choice["logprobs"]
    yield _event(head, [first])
    for i, call in enumerate(calls or []):
        yield _event(head, [{"index": choice["index"], "delta": {"tool_calls": [{"index": i, **call}]},
                             "finish_reason": None}])
    last = {"index": choice["index"], "delta": {}, "finish_reason": choice.get("finish_reason")}
    if "stop_reason" in choice:
        last["stop_reason"] = choice["stop_reason"]
    yield _event(head, [last])


def replay_as_sse(response: Mapping[str, Any], path: str, include_usage: bool = True) -> Iterator[bytes]:
    """A stored (non-streaming) response as OpenAI SSE events, each ``data: {json}\\n\\n``, ending with
    ``data: [DONE]\\n\\n``. The usage goes out in a last chunk with no choices, as OpenAI sends it when the
    request asked for ``stream_options.include_usage``."""
    chat = is_chat(path)
    # OpenAI's order: id, object, created, model, ...
    head = {"id": response["id"]} if "id" in response else {}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    head |= {name: response[name] for name in _SCALAR_FIELDS if name in response and name != "id"}
    for choice in response.get("choices") or []:
        if chat:
            yield from _chat_choice_events(head, choice)
        else:
            yield _event(head, [{k: v for k, v in choice.items() if k in _TEXT_CHOICE_FIELDS}])
    if include_usage and response.get("usage") is not None:
        yield _event(head, [], response["usage"])
    yield b"data: [DONE]\n\n"


def replayable(response: Any, path: str) -> bool:
    """True when the response survives a replay as SSE and its re-assembly unchanged (the storing rule)."""
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        return False
    try:
        return assemble_from_sse(replay_as_sse(response, path), path) == response
    except Exception:  # noqa: BLE001 - whatever a replay of an odd shape raises, it is not stored
        return False
