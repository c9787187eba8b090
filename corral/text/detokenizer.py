"""Turn a stream of generated token ids into a stream of text, one step at a time.

Each ``push`` decodes only a short window of recent tokens (the scheme vLLM uses): ``prefix`` marks
the start of the tokens whose text was emitted last time, ``read`` the end of them. The new text is
``decode(ids[prefix:])`` minus ``decode(ids[prefix:read])``; decoding that window, rather than the
new tokens alone, keeps whatever the decoder does at a token boundary (a sentencepiece space, a
character split over byte tokens) exactly as in a full decode.

Text is held back while it ends in an unfinished character. For byte-level BPE that is decided
from the bytes: hold while the last bytes are a valid but incomplete UTF-8 sequence, and emit a
genuine U+FFFD (invalid bytes that no later byte can fix) at once. For other decoders the only
signal is a trailing U+FFFD, held until the next token shows whether it was genuine.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from corral.text.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"
# A pending (incomplete) UTF-8 sequence is at most 3 bytes; one byte more puts its lead byte in view.
_TAIL_BYTES = 4


class IncrementalDetokenizer:
    """Detokenize one request's generated tokens incrementally.

    Invariants: ``text`` is always a prefix of ``tokenizer.decode(token_ids, skip_special_tokens)``
    and never ends in a partial character; after ``flush()`` it is equal to it. One corner is
    outside this for sentencepiece decoders only: a run of byte-fallback tokens that never becomes
    valid UTF-8 decodes as one U+FFFD per byte token, retroactively covering a character of the run
    already emitted. ``prompt_token_ids`` is kept for the caller; it does not change the text, which
    is the decode of the generated ids alone (the first token reads as in a full decode).
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self.prompt_token_ids = prompt_token_ids
        self.skip_special_tokens = skip_special_tokens
        self._skipped_ids = tokenizer.all_special_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text: str | None = ""  # decode(ids[prefix:read]); None until needed again
        self._text = ""

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text

    @property
    def token_ids(self) -> Sequence[int]:
        """The generated ids pushed so far (a live view: do not mutate)."""
        return self._ids

    def push(self, new_token_ids: Sequence[int]) -> str:
        """Add generated ids; return the text they complete (may be empty while a character is unfinished)."""
        if not new_token_ids:
            return ""
        self._ids.extend(new_token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit whatever is held back; call once the request has finished. Afterwards ``text`` equals
        ``tokenizer.decode(token_ids, skip_special_tokens)`` (an unfinished character becomes U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        ids = self._ids
        if self._prefix_text is None:
            self._prefix_text = self._decode(ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(ids[self._prefix_offset :])
        if len(new_text) <= len(self._prefix_text):
            return ""
        if not final and self._unfinished(new_text):
            return ""
        delta = new_text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        self._prefix_text = None
        self._text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _unfinished(self, window_text: str) -> bool:
        """Could more tokens still change the end of ``window_text``?"""
        if not self._tokenizer.is_byte_level:
            return window_text.endswith(_REPLACEMENT)
        # Bytes before prefix_offset ended on a character boundary, so the window's bytes suffice.
        tail = b""
        for token_id in reversed(self._ids[self._prefix_offset :]):
            if token_id in self._skipped_ids:
                continue  # dropped before decoding, so the bytes around it join up
            tail = self._tokenizer.id_to_bytes(token_id) + tail
            if len(tail) >= _TAIL_BYTES:
                break
        # Invalid bytes become U+FFFD and are passed over; only what stays buffered at the end matters.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(tail[-_TAIL_BYTES:], final=False)
        pending, _ = decoder.getstate()
        return bool(pending)
