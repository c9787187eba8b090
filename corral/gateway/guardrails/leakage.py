"""System prompt leakage (OWASP LLM07): long verbatim overlaps between an answer and the request's system prompt.

Texts are compared as sequences of words (``\\w+``, case-folded), so changed spacing, punctuation or case do not
hide a copy. A leak is a run of at least ``min_words`` consecutive answer words that also occur consecutively
in the system prompt; overlapping runs merge, and each merged run is one span (from its first word to its last).

For each answer word, the length of the longest run ending there is kept up to date word by word (the
classic longest-common-substring recurrence, over the prompt positions that the run could continue from),
so a stream is checked as it arrives. A stream masker holds back the current run, the answer words that still
match the prompt consecutively (no more than the prompt's length), because it may still grow into a leak.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import regex

_WORD = regex.compile(r"\w+")
LEAK_LABEL = "[SYSTEM_PROMPT]"


@dataclass(frozen=True)
class LeakSpan:
    """Characters ``[start, end)`` of the answer copy the system prompt over ``num_words`` words."""

    start: int
    end: int
    num_words: int


class SystemPromptIndex:
    """The system prompt's words and where each occurs."""

    def __init__(self, system_prompt: str, min_words: int = 10):
        if min_words < 1:
            raise ValueError("min_words must be at least 1")
        self.min_words = min_words
        self.words = [word.casefold() for word in _WORD.findall(system_prompt)]
        self.positions: dict[str, list[int]] = defaultdict(list)
        for position, word in enumerate(self.words):
            self.positions[word].append(position)
        self.ngrams = {tuple(self.words[i:i + min_words]) for i in range(len(self.words) - min_words + 1)}

    def could_leak(self, words: list[str]) -> bool:
        """Whether some ``min_words`` consecutive words (case-folded) occur in the prompt: a run that long
        contains such a window, so without one there is no leak (a cheap test before the exact one)."""
        known = 0
        for index, word in enumerate(words):
            known = known + 1 if word in self.positions else 0
            if known >= self.min_words and tuple(words[index - self.min_words + 1:index + 1]) in self.ngrams:
                return True
        return False

    def step(self, runs: dict[int, int], word: str) -> dict[int, int]:
        """``runs`` maps a prompt position to the length of the run ending there with the previous answer word;
        returns the same for ``word``."""
        word = word.casefold()
        following = {position + 1: length + 1 for position, length in runs.items()
                     if position + 1 < len(self.words) and self.words[position + 1] == word}
        for position in self.positions.get(word, ()):
            following.setdefault(position, 1)
        return following


def _run_spans(words: list[tuple[int, int, int]], min_words: int) -> list[tuple[int, int]]:
    """Merged word-index intervals ``[first, last]`` of the runs of at least ``min_words`` words; ``words`` holds
    (start, end, run length ending at this word)."""
    intervals: list[tuple[int, int]] = []
    for index, (_, _, run) in enumerate(words):
        if run >= min_words:
            first = index - run + 1
            if intervals and first <= intervals[-1][1]:
                intervals[-1] = (min(intervals[-1][0], first), index)
            else:
                intervals.append((first, index))
    return intervals


def find_leaks(text: str, index: SystemPromptIndex) -> list[LeakSpan]:
    matches = list(_WORD.finditer(text))
    if not index.could_leak([match[0].casefold() for match in matches]):
        return []
    runs: dict[int, int] = {}
    words: list[tuple[int, int, int]] = []
    for match in matches:
        runs = index.step(runs, match[0])
        words.append((match.start(), match.end(), max(runs.values(), default=0)))
    return [LeakSpan(words[first][0], words[last][1], last - first + 1)
            for first, last in _run_spans(words, index.min_words)]


def mask_leaks(text: str, spans: list[LeakSpan]) -> str:
    parts, position = [], 0
    for span in spans:
        parts += [text[position:span.start], LEAK_LABEL]
        position = span.end
    return "".join(parts) + text[position:]


class LeakStreamMasker:
    """Masks leaks in a stream of chunks; its output equals ``mask_leaks(text, find_leaks(text, index))``.
    ``leaks`` lists the spans masked so far (offsets into the whole text); ``leaked`` says whether any run has
    reached ``min_words`` (a deny needs no more than that)."""

    def __init__(self, index: SystemPromptIndex):
        self.index = index
        self.leaks: list[LeakSpan] = []
        self.leaked = False
        self._pending = ""
        self._base = 0  # offset of _pending in the whole text
        self._scanned = 0  # where the next word search starts in _pending
        self._runs: dict[int, int] = {}
        self._words: list[tuple[int, int, int]] = []  # complete words of _pending: start, end, run

    @property
    def held_chars(self) -> int:
        return len(self._pending)

    @property
    def emitted_chars(self) -> int:
        """How much of the whole text is emitted (final): ``leaks`` holds every leak before it."""
        return self._base

    def feed(self, chunk: str) -> str:
        self._pending += chunk
        partial_start = None
        for match in _WORD.finditer(self._pending, self._scanned):
            if match.end() == len(self._pending):  # the word may go on in the next chunk
                partial_start = match.start()
                break
            self._add_word(match)
        else:
            self._scanned = len(self._pending)
        if partial_start is not None:
            self._scanned = partial_start
        last_run = self._words[-1][2] if self._words else 0
        settled = len(self._words) - last_run  # the current run may still become (part of) a leak
        return self._emit(settled, partial_start)

    def flush(self) -> str:
        for match in _WORD.finditer(self._pending, self._scanned):
            self._add_word(match)
        return self._emit(len(self._words), None, final=True)

    def _add_word(self, match: regex.Match) -> None:
        self._runs = self.index.step(self._runs, match[0])
        run = max(self._runs.values(), default=0)
        self.leaked = self.leaked or run >= self.index.min_words
        self._words.append((match.start(), match.end(), run))
        self._scanned = match.end()

    def _emit(self, settled: int, partial_start: int | None, final: bool = False) -> str:
        intervals = _run_spans(self._words, self.index.min_words)
        for first, last in reversed(intervals):  # a leak that reaches past the settled word holds it all
            if first < settled <= last:
                settled = first
        if final:
            cut = len(self._pending)
        elif settled < len(self._words):
            cut = self._words[settled][0]
        else:
            cut = len(self._pending) if partial_start is None else partial_start
        spans = [LeakSpan(self._words[first][0], self._words[last][1], last - first + 1)
                 for first, last in intervals if last < settled or final]
        output = mask_leaks(self._pending[:cut], spans)
        self.leaks += [LeakSpan(s.start + self._base, s.end + self._base, s.num_words) for s in spans]
        self._pending = self._pending[cut:]
        self._base += cut
        self._scanned = max(0, self._scanned - cut)
        kept = self._words[settled:] if not final else []
        self._words = [(start - cut, end - cut, run) for start, end, run in kept]
        return output
