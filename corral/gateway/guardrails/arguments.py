"""The output checks of a tool call's arguments: JSON text, checked like an answer's text, masked so that the
JSON stays what it was (valid where it was valid).

The checks read the arguments as JSON text whose strings are decoded (``\\n`` is a line break, ``\\u0040`` an
``@``, ``\\"`` a quote), so an entity next to an escape is found whole and a key such as ``"ssn"`` is context
for the value after it. A mask replaces only what lies inside a string with its label (``[EMAIL]``: no quote,
no backslash); the JSON around it (quotes, ``:``, ``,``, brackets) is kept even where a finding covers it, and
a number or other bare token with an entity in it becomes a string holding the masked token. Unmasked text goes
out exactly as it came.

The checks run side by side on the same decoded text (not chained as on an answer's text: a mask of one check
would hide the JSON from the next), each through its own stream masker; what every masker has let go of may
be sent. A bare token goes out whole, once it has ended (it may have to be quoted). ``json_output`` does not
apply to arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from corral.gateway.guardrails.leakage import (
    LEAK_LABEL,
    LeakStreamMasker,
    SystemPromptIndex,
    find_leaks,
)
from corral.gateway.guardrails.output_stream import StagedChecks, entity_result, leak_result
from corral.gateway.guardrails.pii import EntityDetector
from corral.gateway.guardrails.policy import CheckConfig, LeakageCheck, PiiCheck, SecretsCheck, check_name
from corral.gateway.guardrails.stream_mask import StreamMasker
from corral.gateway.guardrails.verdict import CheckResult

UnitKind = Literal["structure", "string", "bare"]
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_STRUCTURE = frozenset("{}[]:, \t\n\r")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass
class _Unit:
    """Raw JSON text and what the checks read for it (``view``): the same text, or one decoded escape."""

    view: str
    raw: str
    kind: UnitKind
    token: int  # which string or bare token (-1 for structure)

    @property
    def plain(self) -> bool:
        return self.view == self.raw


class JsonLexer:
    """Cuts JSON text, fed in fragments, into units: structure (outside strings, the quotes included), a string's
    content (decoded escapes one unit each), and bare tokens (numbers, literals, anything else outside strings).
    It never refuses text: what is not JSON is read as bare tokens and strings as far as it goes."""

    def __init__(self) -> None:
        self._in_string = False
        self._escape = ""  # an escape sequence not complete yet
        self._token = -1
        self._bare = False  # a bare token is open (more of it may follow)

    @property
    def open_bare_token(self) -> int | None:
        return self._token if self._bare else None

    def feed(self, raw: str) -> list[_Unit]:
        units: list[_Unit] = []
        for char in raw:
            if self._escape:
                self._escape += char
                if _escape_complete(self._escape):
                    _append(units, _Unit(_decode(self._escape), self._escape, "string", self._token))
                    self._escape = ""
            elif self._in_string:
                if char == "\\":
                    self._escape = char
                elif char == '"':
                    self._in_string = False
                    _append(units, _Unit(char, char, "structure", -1))
                else:
                    _append(units, _Unit(char, char, "string", self._token))
            elif char == '"' or char in _STRUCTURE:
                self._bare = False
                if char == '"':
                    self._in_string, self._token = True, self._token + 1
                _append(units, _Unit(char, char, "structure", -1))
            else:
                if not self._bare:
                    self._bare, self._token = True, self._token + 1
                _append(units, _Unit(char, char, "bare", self._token))
        return units

    def finish(self) -> list[_Unit]:
        """The end of the text: an escape cut short is read as it is; an open bare token ends."""
        units = [_Unit(self._escape, self._escape, "string", self._token)] if self._escape else []
        self._escape, self._bare = "", False
        return units


def _escape_complete(escape: str) -> bool:
    if escape[1] != "u":
        return True
    return len(escape) == 6 or (len(escape) > 2 and escape[-1] not in _HEX)


def _decode(escape: str) -> str:
    if escape[1] != "u":
        return _ESCAPES.get(escape[1], escape[1])
    return chr(int(escape[2:], 16)) if len(escape) == 6 and escape[-1] in _HEX else escape[1:]


def _append(units: list[_Unit], unit: _Unit) -> None:
    """Appends ``unit``, joined to the last one when both are plain text of the same kind and token."""
    last = units[-1] if units else None
    if last is not None and last.kind == unit.kind and last.token == unit.token and last.plain and unit.plain:
        last.view += unit.view
        last.raw += unit.raw
    else:
        units.append(unit)


@dataclass(frozen=True)
class _MaskSpan:
    start: int
    end: int
    label: str


class _ArgumentsStage:
    """One check on the decoded arguments: a stream masker for mask and deny, the whole text at the end for
    flag and allow. ``settled``: how much of the text it has let go of."""

    def __init__(self, check: PiiCheck | SecretsCheck | LeakageCheck, detector: EntityDetector | None,
                 system_prompt: str | None):
        self.check, self.detector = check, detector
        self.index = SystemPromptIndex(system_prompt or "", check.min_words) if detector is None else None
        self.masker: StreamMasker | LeakStreamMasker | None = None
        if check.action in ("mask", "deny"):
            self.masker = StreamMasker(detector) if detector is not None else LeakStreamMasker(self.index)
        self._seen: list[str] = []
        self._found: list = []  # the whole text's findings or leaks, for a check without a masker
        self._taken = 0  # how many of the masker's findings were handed out as mask spans

    @property
    def settled(self) -> float:
        return float("inf") if self.masker is None else self.masker.emitted_chars

    @property
    def denied(self) -> bool:
        if self.check.action != "deny":
            return False
        # A leak deny needs no more than a run reaching min_words, before its span is complete.
        return self.masker.leaked if isinstance(self.masker, LeakStreamMasker) else bool(self.masker.findings)

    def feed(self, text: str) -> None:
        if self.masker is None:
            self._seen.append(text)
        elif text:
            self.masker.feed(text)

    def flush(self) -> None:
        if self.masker is not None:
            self.masker.flush()
        elif self.detector is not None:
            self._found = self.detector.find("".join(self._seen))
        else:
            self._found = find_leaks("".join(self._seen), self.index)

    def new_spans(self) -> list[_MaskSpan]:
        """The spans to mask that the masker settled since the last call."""
        if self.check.action != "mask":
            return []
        found = self._found_so_far()
        fresh, self._taken = found[self._taken:], len(found)
        if self.detector is None:
            return [_MaskSpan(leak.start, leak.end, LEAK_LABEL) for leak in fresh]
        labels = self.detector.labels
        return [_MaskSpan(finding.start, finding.end, labels[finding.pattern]) for finding in fresh]

    def result(self) -> CheckResult:
        if self.detector is not None:
            return entity_result(self.check, self._found_so_far())
        if self.denied:
            return CheckResult(check_name(self.check), "leakage", True, "deny", {"system_prompt": 1})
        return leak_result(self.check, self._found_so_far())

    def _found_so_far(self) -> list:
        if isinstance(self.masker, StreamMasker):
            return self.masker.findings
        if isinstance(self.masker, LeakStreamMasker):
            return self.masker.leaks
        return self._found


class ArgumentsStream(StagedChecks):
    """``feed`` each fragment of one tool call's arguments and send what it returns; ``finish`` at the end and
    send what it returns. As OutputStream: once ``denied``, nothing more comes out; ``verdict`` holds the
    results so far (spans are offsets into the decoded arguments)."""

    def __init__(self, checks: list[CheckConfig], detectors: dict[str, EntityDetector], system_prompt: str | None):
        self._stages = [_ArgumentsStage(check, detectors.get(check_name(check)), system_prompt)
                        for check in checks if isinstance(check, PiiCheck | SecretsCheck | LeakageCheck)]
        self._lexer = JsonLexer()
        self._units: list[_Unit] = []  # not sent yet
        self._offset = 0  # decoded offset of the first unit not sent
        self._length = 0  # decoded length of all the text so far
        self._spans: list[_MaskSpan] = []  # settled, not overlapping, in order; those behind _offset dropped
        self._labelled: tuple[int, int] | None = None  # (span start, token) whose label went out last
        self.finished = False

    def feed(self, fragment: str) -> str:
        if self.denied or self.finished or not fragment:
            return ""
        return self._advance(self._lexer.feed(fragment), final=False)

    def finish(self) -> str:
        if self.denied or self.finished:
            return ""
        self.finished = True
        return self._advance(self._lexer.finish(), final=True)

    def _advance(self, units: list[_Unit], final: bool) -> str:
        text = "".join(unit.view for unit in units)
        for unit in units:
            _append(self._units, unit)
        self._length += len(text)
        for stage in self._stages:
            stage.feed(text)
            if final:
                stage.flush()
            if stage.denied:
                return ""
        self._add_spans([span for stage in self._stages for span in stage.new_spans()])
        limit = min((stage.settled for stage in self._stages), default=float("inf"))
        return self._emit(self._length if final else min(limit, self._length), final)

    def _add_spans(self, spans: list[_MaskSpan]) -> None:
        merged: list[_MaskSpan] = []
        for span in sorted(self._spans + spans, key=lambda span: (span.start, -span.end)):
            if merged and span.start < merged[-1].end:
                last = merged[-1]
                merged[-1] = _MaskSpan(last.start, max(last.end, span.end), last.label)
            else:
                merged.append(span)
        self._spans = merged

    def _emit(self, limit: int, final: bool) -> str:
        """The raw text of the units up to ``limit`` (decoded offset), masked; a bare token only once it has ended."""
        out: list[str] = []
        while self._units:
            unit = self._units[0]
            end = self._offset + len(unit.view)
            if unit.kind == "bare":
                if end > limit or (not final and unit.token == self._lexer.open_bare_token):
                    break
                out.append(self._bare(unit))
            elif end <= limit:
                out.append(self._masked(unit, len(unit.view)))
            else:
                count = limit - self._offset
                if count <= 0 or not unit.plain:
                    break
                out.append(self._masked(unit, count))
                self._units[0] = _Unit(unit.view[count:], unit.raw[count:], unit.kind, unit.token)
                self._offset += count
                break
            self._units.pop(0)
            self._offset = end
        return "".join(out)

    def _bare(self, unit: _Unit) -> str:
        masked = self._masked(unit, len(unit.view))
        return masked if masked == unit.raw else json.dumps(masked, ensure_ascii=False)

    def _masked(self, unit: _Unit, count: int) -> str:
        """The raw text of ``unit``'s first ``count`` decoded characters, with what a span covers in a string or a
        bare token replaced by the span's label (once per span and token)."""
        start = self._offset
        while self._spans and self._spans[0].end <= start:
            self._spans.pop(0)
        if unit.kind == "structure" or not self._spans or self._spans[0].start >= start + count:
            return unit.raw[:count] if unit.plain else unit.raw
        parts: list[str] = []
        for position in range(count):
            span = self._covering(start + position)
            if span is None:
                parts.append(unit.raw[position] if unit.plain else unit.raw)
            elif self._labelled != (span.start, unit.token):
                parts.append(span.label)
                self._labelled = (span.start, unit.token)
        return "".join(parts)

    def _covering(self, position: int) -> _MaskSpan | None:
        for span in self._spans:
            if span.start > position:
                return None
            if position < span.end:
                return span
        return None
