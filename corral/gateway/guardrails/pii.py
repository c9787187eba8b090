"""Finds and masks PII and secrets in text with the entity patterns of patterns.py.

Each pattern is searched on its own (so a phone-shaped part of a card number is still seen by the card
pattern); a candidate that fails its validator is skipped one character on, so a failed long candidate does
not hide a valid shorter one that starts inside it. Overlapping findings of different patterns are resolved
leftmost first, then longest, then in pattern order (vendor keys before the generic ``secret = ...``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import regex

from corral.gateway.guardrails.patterns import EntityPattern, builtin_patterns, scoped


@dataclass(frozen=True)
class Finding:
    """One entity: ``[start, end)`` is what is masked; ``[match_start, match_end)`` is the regex match that found
    it (the same, or larger when only a named group is the secret), which a stream must never cut."""

    kind: str
    pattern: str
    start: int
    end: int
    match_start: int
    match_end: int


class EntityDetector:
    """Finds entities of the given patterns (by default every built-in one). Stateless and thread-safe."""

    def __init__(self, patterns: Sequence[EntityPattern] | None = None):
        patterns = builtin_patterns() if patterns is None else patterns
        if not patterns:
            raise ValueError("an entity detector needs at least one pattern")
        names = [pattern.name for pattern in patterns]
        if len(set(names)) != len(names):
            raise ValueError(f"pattern names must be unique: {names}")
        self.patterns = tuple(patterns)
        # Left context a decision at position p reads: its lookbehinds and context words (whose own (?<!\w) reads
        # one character more).
        self.context_chars = max(max(p.shape.max_lookbehind, p.context_chars + 1) for p in self.patterns)
        self.max_width = max(pattern.shape.max_width for pattern in self.patterns)
        self._live_combined, self._live_alone = _liveness_regexes(self.patterns)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(pattern.kind for pattern in self.patterns)

    def candidates(self, text: str, start: int = 0, stop: int | None = None) -> list[Finding]:
        """Every validated finding whose match starts in ``[start, stop)``, overlapping ones included."""
        stop = len(text) if stop is None else stop
        found: list[Finding] = []
        for pattern in self.patterns:
            found.extend(self._scan(pattern, text, start, stop))
        return found

    def find(self, text: str, start: int = 0, stop: int | None = None) -> list[Finding]:
        """The findings to mask, without overlaps, in text order."""
        return resolve(self.candidates(text, start, stop), self.patterns)

    def mask(self, text: str) -> tuple[str, list[Finding]]:
        """``text`` with each finding replaced by its label (``[EMAIL]``), and the findings (offsets into text)."""
        findings = self.find(text)
        return apply_masks(text, findings, self.labels, 0, len(text)), findings

    @property
    def labels(self) -> dict[str, str]:
        return {pattern.name: pattern.label for pattern in self.patterns}

    def _scan(self, pattern: EntityPattern, text: str, start: int, stop: int) -> Iterable[Finding]:
        position = start
        while position < stop:
            match = pattern.compiled.search(text, position)
            if match is None or match.start() >= stop:
                return
            finding = _accept(pattern, text, match)
            if finding is None:
                position = match.start() + 1
                continue
            yield finding
            position = finding.match_end

    def is_live(self, text: str, position: int) -> bool:
        """Whether ``text[position:]`` could still grow into a match of some pattern (or is one that more text
        could change): only then must a stream hold it back. The ``regex`` module's partial matching answers
        this, for all patterns at once in one alternation (one call instead of one per pattern), except for a word
        boundary at the very end of the text, which two sentinel characters settle for patterns that have one."""
        if self._live_combined is not None and self._live_combined.fullmatch(text, position, partial=True):
            return True
        for compiled in self._live_alone:
            if compiled.fullmatch(text, position, partial=True) is not None:
                return True
            for sentinel in ("a", " "):
                extended = text + sentinel
                match = compiled.match(extended, position)
                if match is not None and match.end() >= len(text):
                    return True
                if compiled.fullmatch(extended, position, partial=True) is not None:
                    return True
        return False


def _liveness_regexes(patterns: Sequence[EntityPattern]) -> tuple[regex.Pattern | None, list[regex.Pattern]]:
    """One alternation of the patterns that can share one, and the rest (a word boundary needs the sentinel
    test; a numbered backreference would point at another pattern's group)."""
    together = [p for p in patterns if not p.shape.word_boundary and not p.shape.backreference]
    alone = [p.compiled for p in patterns if p not in together]
    if not together:
        return None, alone
    try:
        return regex.compile("|".join(scoped(p.regex) for p in together)), alone
    except regex.error:
        return None, [p.compiled for p in patterns]


def _accept(pattern: EntityPattern, text: str, match) -> Finding | None:
    window_start = max(0, match.start() - pattern.context_chars)
    if pattern.context is not None and pattern.context.search(text, window_start, match.start()) is None:
        return None
    if pattern.deny_context is not None and pattern.deny_context.search(text, window_start, match.start()):
        return None
    if pattern.secret_group is not None:
        start, end = match.span(pattern.secret_group)
        if pattern.validate is not None and pattern.validate(text[start:end]) != end - start:
            return None
        return Finding(pattern.kind, pattern.name, start, end, match.start(), match.end())
    length = len(match.group()) if pattern.validate is None else pattern.validate(match.group())
    if length is None or not 0 < length <= len(match.group()):
        return None
    end = match.start() + length
    return Finding(pattern.kind, pattern.name, match.start(), end, match.start(), end)


def resolve(candidates: list[Finding], patterns: Sequence[EntityPattern]) -> list[Finding]:
    """Leftmost, then longest, then the earlier pattern; overlapping losers are dropped."""
    order = {pattern.name: index for index, pattern in enumerate(patterns)}
    kept: list[Finding] = []
    end = -1
    for finding in sorted(candidates, key=lambda f: (f.start, f.start - f.end, order[f.pattern])):
        if finding.start >= end:
            kept.append(finding)
            end = finding.end
    return kept


def apply_masks(text: str, findings: Sequence[Finding], labels: dict[str, str], start: int, stop: int) -> str:
    """``text[start:stop]`` with each finding (all inside it, in order, not overlapping) replaced by its label."""
    parts: list[str] = []
    position = start
    for finding in findings:
        parts.append(text[position:finding.start])
        parts.append(labels[finding.pattern])
        position = finding.end
    parts.append(text[position:stop])
    return "".join(parts)
