"""The output checks of one streamed answer, applied by its tap (stream_tap.py) to each parsed SSE event: one
OutputStream per choice index, fed each event's delta text, and one ArgumentsStream per tool call of a choice
(by the tool call's ``index``), fed its ``function.arguments`` fragments, and one for the legacy
``delta.function_call.arguments`` (OpenAI's deprecated single call); the event is rewritten with what the
checks let out. A choice's held-back text and arguments go out with its ``finish_reason`` (or, for a choice the
upstream never finished, in an event of its own before ``[DONE]``). A denial ends the answer at once: the tap
sends an error event and ``[DONE]``, and nothing more of the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from corral.gateway.guardrails.verdict import ContentPolicyError

if TYPE_CHECKING:
    from corral.gateway.guard_path import RequestGuard
    from corral.gateway.guardrails.arguments import ArgumentsStream
    from corral.gateway.guardrails.output_stream import OutputStream

_CHUNK_HEADER = ("id", "object", "created", "model")
FUNCTION_CALL: Literal["function_call"] = "function_call"
CallKey = int | Literal["function_call"]  # a tool call's index, or the legacy function_call


class StreamGuard:
    """``rewrite`` each parsed event, ``finish_all`` at ``[DONE]``, ``close`` when the stream ends however it
    ends (records every choice's verdict once). ``error`` is set once a check denied."""

    def __init__(self, guard: RequestGuard, system_prompt: str | None, response_format: dict[str, Any] | None):
        self.guard, self.system_prompt, self.response_format = guard, system_prompt, response_format
        self.streams: dict[int, OutputStream] = {}
        self.tool_calls: dict[int, dict[CallKey, ArgumentsStream]] = {}  # per choice: by tool call index
        self.headers: dict[int, dict[str, Any]] = {}  # per choice: its chunks' id/object/created/model
        self.chat: dict[int, bool] = {}  # per choice: delta.content (chat) rather than text (completion)
        self.recorded: set[int] = set()
        self.texted: set[int] = set()  # the choices that had some text
        self.error: ContentPolicyError | None = None

    def rewrite(self, chunk: Any) -> list[Any]:
        """The chunks to send for one upstream chunk: its choices' texts replaced by what the checks let out; a
        choice left with no text and nothing else to say dropped, and the chunk too when nothing is left of it."""
        if self.error is not None:
            return []
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices:
            return [chunk]
        kept = []
        for position, choice in enumerate(choices):
            holder, key = text_slot(choice, streamed=True)
            if not isinstance(choice, dict):
                kept.append(choice)
                continue
            index = choice.get("index", position)
            index = index if isinstance(index, int) else position
            self._open(index, chunk, chat=key != "text")
            text = self._feed_text(index, holder[key]) if holder is not None and holder[key] else ""
            arguments = self._feed_tool_calls(index, choice.get("delta"))
            if choice.get("finish_reason") is not None:
                text += self._finish_text(index)
                _add_arguments(arguments, self._finish_tool_calls(index))
                self._record(index)
            denied = self._denied_stream(index)
            if denied is not None:
                self._deny(denied)
                return []
            if holder is None and text:  # a finish event without text, e.g. chat's ``delta: {}``
                holder, key = (choice.setdefault("delta", {}), "content") if self.chat[index] else (choice, "text")
            if holder is not None:
                holder[key] = text
            _set_tool_calls(choice, arguments)
            if text or _says_more(choice, holder, key):
                kept.append(choice)
        if not kept and chunk.get("usage") is None:
            return []
        return [{**chunk, "choices": kept}]

    def finish_all(self) -> list[Any]:
        """At ``[DONE]``: the held-back text of each choice the upstream did not finish, one chunk each."""
        if self.error is not None:
            return []
        chunks = []
        for index in list(self.streams):
            if index in self.recorded:
                continue
            text = self._finish_text(index)
            arguments = self._finish_tool_calls(index)
            self._record(index)
            denied = self._denied_stream(index)
            if denied is not None:
                self._deny(denied)
                return []
            if text or arguments:
                choice = ({"index": index, "delta": {"content": text} if text else {}} if self.chat[index]
                          else {"index": index, "text": text, "logprobs": None})
                _set_tool_calls(choice, arguments)
                chunks.append({**self.headers[index], "choices": [{**choice, "finish_reason": None}]})
        return chunks

    def close(self) -> None:
        """Records (and counts) the verdict of every choice not recorded yet: a stream cut short included."""
        for index in self.streams:
            self._record(index)

    def _open(self, index: int, chunk: dict[str, Any], chat: bool) -> None:
        """The choice's text stream, made at its first event."""
        if index not in self.streams:
            self.streams[index] = self.guard.policy.guardrails.output_stream(self.system_prompt, self.response_format)
            self.headers[index] = {name: chunk[name] for name in _CHUNK_HEADER if name in chunk}
            self.chat[index] = chat

    def _feed_text(self, index: int, text: str) -> str:
        self.texted.add(index)
        return self.streams[index].feed(text)

    def _finish_text(self, index: int) -> str:
        # A choice of tool calls alone has no text to check (an empty text is not the JSON a request asked for).
        if index not in self.texted and self.tool_calls.get(index):
            return ""
        return self.streams[index].finish()

    def _feed_tool_calls(self, index: int, delta: Any) -> dict[CallKey, str]:
        """The arguments the checks let out of this delta's tool calls, by tool call index (and of its legacy
        ``function_call``, under FUNCTION_CALL)."""
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        functions: list[tuple[CallKey, Any]] = []
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                number = call.get("index", position)
                functions.append((number if isinstance(number, int) else position, call.get("function")))
        legacy = delta.get("function_call") if isinstance(delta, dict) else None
        if isinstance(legacy, dict):
            functions.append((FUNCTION_CALL, legacy))
        arguments: dict[CallKey, str] = {}
        for number, function in functions:
            streams = self.tool_calls.setdefault(index, {})
            if number not in streams:
                streams[number] = self.guard.policy.guardrails.arguments_stream(self.system_prompt)
            fragment = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(fragment, str):
                _add_arguments(arguments, {number: streams[number].feed(fragment)})
        return arguments

    def _finish_tool_calls(self, index: int) -> dict[CallKey, str]:
        return {number: stream.finish() for number, stream in self.tool_calls.get(index, {}).items()}

    def _denied_stream(self, index: int) -> OutputStream | ArgumentsStream | None:
        streams = [self.streams[index], *self.tool_calls.get(index, {}).values()]
        return next((stream for stream in streams if stream.denied), None)

    def _record(self, index: int) -> None:
        if index not in self.recorded:
            self.recorded.add(index)
            calls = {number: stream.verdict for number, stream in self.tool_calls.get(index, {}).items()}
            self.guard.record_output(index, self.streams[index].verdict, calls)

    def _deny(self, stream: OutputStream | ArgumentsStream) -> None:
        self.close()
        self.error = ContentPolicyError(stream.verdict)


def _add_arguments(arguments: dict[CallKey, str], more: dict[CallKey, str]) -> None:
    for number, text in more.items():
        arguments[number] = arguments.get(number, "") + text


def _set_tool_calls(choice: dict[str, Any], arguments: dict[CallKey, str]) -> None:
    """Puts the checked arguments in the choice's ``delta.tool_calls``: an entry keeps what else it says (id, type,
    name), an entry left with nothing is dropped, and held-back arguments released now get an entry of their own;
    the legacy ``function_call``'s likewise in ``delta.function_call``."""
    arguments = dict(arguments)
    legacy = arguments.pop(FUNCTION_CALL, None)
    if legacy is not None:
        _set_function_call(choice, legacy)
    delta = choice.get("delta")
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if not isinstance(calls, list):
        if not any(arguments.values()):
            return
        delta, calls = choice.setdefault("delta", {}), []
    kept, placed = [], set()
    for position, call in enumerate(calls):
        number = call.get("index", position) if isinstance(call, dict) else None
        number = number if isinstance(number, int) else position
        if isinstance(call, dict) and number in arguments and number not in placed:
            placed.add(number)
            call = _with_arguments(call, arguments[number])
        if call is not None:
            kept.append(call)
    kept += [{"index": number, "function": {"arguments": text}} for number, text in arguments.items()
             if text and number not in placed]
    if kept:
        delta["tool_calls"] = kept
    else:
        delta.pop("tool_calls", None)


def _set_function_call(choice: dict[str, Any], text: str) -> None:
    delta = choice.get("delta")
    call = delta.get("function_call") if isinstance(delta, dict) else None
    if isinstance(call, dict):
        call = {**call, "arguments": text}
        if text or set(call) != {"arguments"}:
            delta["function_call"] = call
        else:
            delta.pop("function_call")
    elif text:
        choice.setdefault("delta", {})["function_call"] = {"arguments": text}


def _with_arguments(call: dict[str, Any], text: str) -> dict[str, Any] | None:
    """``call`` with its arguments replaced by ``text``; None when that leaves it nothing to say."""
    function = call.get("function")
    function = {**function, "arguments": text} if isinstance(function, dict) else {"arguments": text}
    call = {**call, "function": function}
    return call if text or set(call) - {"index", "function"} or set(function) - {"arguments"} else None


def _says_more(choice: dict[str, Any], holder: dict[str, Any] | None, key: str) -> bool:
    """Whether a choice whose text is now empty still carries something: a finish reason, a role, tool calls."""
    if choice.get("finish_reason") is not None:
        return True
    if holder is None:  # no text at all: a role-only or tool-call delta
        delta = choice.get("delta")
        return not isinstance(delta, dict) or any(value is not None for value in delta.values())
    return any(value is not None and name != key for name, value in holder.items()) if holder is not choice else False


def text_slot(choice: Any, streamed: bool) -> tuple[dict[str, Any] | None, str]:
    """Where a choice's text is: a completion's ``text``, or a chat ``message.content`` (``delta.content`` when
    streamed); (None, "") for a choice without text (tool calls only, a role-only delta)."""
    if not isinstance(choice, dict):
        return None, ""
    if isinstance(choice.get("text"), str):
        return choice, "text"
    holder = choice.get("delta" if streamed else "message")
    if isinstance(holder, dict) and isinstance(holder.get("content"), str):
        return holder, "content"
    return None, ""
