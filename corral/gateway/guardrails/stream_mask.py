"""Masks entities in a stream of text chunks (SSE deltas) without ever emitting part of an unmasked entity.

The masker holds back the trailing text from the earliest position at which some pattern could still match
(its text so far is a possible beginning of a match, by the ``regex`` module's partial matching, see
``EntityDetector.is_live``), and no further: a position that can no longer start a match stays so as text
arrives. What it emits before that point is final: every match starting there is complete and determined by
the text already seen. The hold-back is therefore bounded by the longest match a pattern allows
(``EntityDetector.max_width``: 601 characters for an e-mail address, 24,082 for a PEM private key of up to 200
lines, which is held whole until its END line), and in ordinary prose it is a word or less.

Output equals the one-shot ``EntityDetector.mask`` of the whole text, whatever the chunking (property-tested).
"""

from __future__ import annotations

from dataclasses import replace

from corral.gateway.guardrails.pii import EntityDetector, Finding, apply_masks, resolve


class StreamMasker:
    """Fed chunks in order (``feed``), then ``flush`` once at the end of the stream. ``findings`` holds what was
    masked, with offsets into the whole unmasked text."""

    def __init__(self, detector: EntityDetector):
        self.detector = detector
        self.findings: list[Finding] = []
        self.max_held_chars = 0
        self._context = ""  # the last emitted raw characters: lookbehinds and context words read them
        self._pending = ""  # raw text not yet emitted
        self._base = 0  # offset of _pending in the whole text
        self._scanned = 0  # positions of _pending below this were tested for liveness
        self._live: list[int] = []  # positions in _pending where some pattern could still match

    @property
    def held_chars(self) -> int:
        return len(self._pending)

    @property
    def emitted_chars(self) -> int:
        """How much of the whole text is emitted (final): ``findings`` holds every entity before it."""
        return self._base

    def feed(self, chunk: str) -> str:
        """Returns the masked text that can be emitted now (possibly empty)."""
        if not chunk:
            return ""
        self._pending += chunk
        self.max_held_chars = max(self.max_held_chars, len(self._pending))
        text = self._context + self._pending
        offset = len(self._context)
        # A position found dead stays dead (no more text can make it a match), so only the live ones and the
        # new ones are tested.
        live = [start for start in self._live if self.detector.is_live(text, offset + start)]
        live.extend(start for start in range(self._scanned, len(self._pending))
                    if self.detector.is_live(text, offset + start))
        self._live = live
        self._scanned = len(self._pending)
        return self._commit(text, offset, live[0] if live else len(self._pending))

    def flush(self) -> str:
        """The rest of the text, masked: at the end of the stream nothing can grow any more."""
        text = self._context + self._pending
        offset = len(self._context)
        findings = self.detector.find(text, offset)
        output = apply_masks(text, findings, self.detector.labels, offset, len(text))
        self._record(findings, offset)
        self._advance(text, offset, len(text))
        return output

    def _commit(self, text: str, offset: int, settled: int) -> str:
        if settled == 0:
            return ""
        cut = offset + settled
        candidates = self.detector.candidates(text, offset, cut)
        # A match that starts before the cut is complete, but may run past it: cut before it instead.
        moved = True
        while moved:
            moved = False
            for candidate in candidates:
                if candidate.match_start < cut < candidate.match_end:
                    cut, moved = candidate.match_start, True
        if cut == offset:
            return ""
        findings = resolve([c for c in candidates if c.match_start < cut], self.detector.patterns)
        output = apply_masks(text, findings, self.detector.labels, offset, cut)
        self._record(findings, offset)
        self._advance(text, offset, cut)
        return output

    def _record(self, findings: list[Finding], offset: int) -> None:
        shift = self._base - offset
        self.findings.extend(replace(f, start=f.start + shift, end=f.end + shift, match_start=f.match_start + shift,
                                     match_end=f.match_end + shift) for f in findings)

    def _advance(self, text: str, offset: int, cut: int) -> None:
        emitted = cut - offset
        self._context = text[max(0, cut - self.detector.context_chars):cut]
        self._pending = self._pending[emitted:]
        self._base += emitted
        self._scanned = max(0, self._scanned - emitted)
        self._live = [start - emitted for start in self._live if start >= emitted]
