"""The output checks of one streamed answer, applied by its tap (stream_tap.py) to each parsed SSE event: one
OutputStream per choice index, fed each event's delta text, the event rewritten with what the checks let out.
A choice's held-back text goes out with its ``finish_reason`` (or, for a choice the upstream never finished,
in an event of its own before ``[DONE]``). A denial ends the answer at once: the tap sends an error event and
``[DONE]``, and nothing more of the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.gateway.guardrails.verdict import ContentPolicyError

if TYPE_CHECKING:
    from corral.gateway.guard_path import RequestGuard
    from corral.gateway.guardrails.output_stream import OutputStream

_CHUNK_HEADER = ("id", "object", "created", "model")


class StreamGuard:
    """``rewrite`` each parsed event, ``finish_all`` at ``[DONE]``, ``close`` when the stream ends however it
    ends (records every choice's verdict once). ``error`` is set once a check denied."""

    def __init__(self, guard: RequestGuard, system_prompt: str | None, response_format: dict[str, Any] | None):
        self.guard, self.system_prompt, self.response_format = guard, system_prompt, response_format
        self.streams: dict[int, OutputStream] = {}
        self.headers: dict[int, dict[str, Any]] = {}  # per choice: its chunks' id/object/created/model
        self.chat: dict[int, bool] = {}  # per choice: delta.content (chat) rather than text (completion)
        self.recorded: set[int] = set()
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
            stream = self._stream(index, chunk, chat=key != "text")
            text = stream.feed(holder[key]) if holder is not None and holder[key] else ""
            if choice.get("finish_reason") is not None:
                text += stream.finish()
                self._record(index)
            if stream.denied:
                self._deny(stream)
                return []
            if holder is None and text:  # a finish event without text, e.g. chat's ``delta: {}``
                holder, key = (choice.setdefault("delta", {}), "content") if self.chat[index] else (choice, "text")
            if holder is not None:
                holder[key] = text
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
        for index, stream in self.streams.items():
            if index in self.recorded:
                continue
            text = stream.finish()
            self._record(index)
            if stream.denied:
                self._deny(stream)
                return []
            if text:
                choice = ({"index": index, "delta": {"content": text}} if self.chat[index]
                          else {"index": index, "text": text, "logprobs": None})
                chunks.append({**self.headers[index], "choices": [{**choice, "finish_reason": None}]})
        return chunks

    def close(self) -> None:
        """Records (and counts) the verdict of every choice not recorded yet: a stream cut short included."""
        for index, stream in self.streams.items():
            self._record(index, stream)

    def _stream(self, index: int, chunk: dict[str, Any], chat: bool) -> OutputStream:
        stream = self.streams.get(index)
        if stream is None:
            stream = self.guard.policy.guardrails.output_stream(self.system_prompt, self.response_format)
            self.streams[index] = stream
            self.headers[index] = {name: chunk[name] for name in _CHUNK_HEADER if name in chunk}
            self.chat[index] = chat
        return stream

    def _record(self, index: int, stream: OutputStream | None = None) -> None:
        if index not in self.recorded:
            self.recorded.add(index)
            self.guard.record_output(index, (stream or self.streams[index]).verdict)

    def _deny(self, stream: OutputStream) -> None:
        self.close()
        self.error = ContentPolicyError(stream.verdict)


def _says_more(choice: dict[str, Any], holder: dict[str, Any] | None, key: str) -> bool:
    """Whether a choice whose text is now empty still carries something: a finish reason, a role, tool calls."""
    if choice.get("finish_reason") is not None:
        return True
    if holder is None:
        return True  # no text at all: a role-only or tool-call delta, passed as it is
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
