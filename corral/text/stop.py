"""Stop strings: find them in streamed text, cut the output there, and never stream part of one.

Typical use per step, with ``text`` the request's detokenized output so far and ``delta`` the
text this step added::

    match = checker.check(text, len(delta))
    if match is not None:
        finish(match.text, stop_reason=match.stop_str)
    else:
        streamable = text[: len(text) - checker.num_held_back(text)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.errors import InvalidSamplingParamsError


@dataclass(frozen=True)
class StopMatch:
    """A stop string completed: ``text`` is the output cut at it (keeping it if asked)."""

    stop_str: str
    text: str


class StopChecker:
    """Finds the first stop string that completes in a growing text.

    "First" is by where the match ends, which is the order a token-by-token stream would see them
    in; for two matches ending at the same place the longer one wins (it cuts more). Each call
    only searches the tail that a new match could touch: the new characters plus ``len(stop) - 1``
    before them, so a step costs O(new chars + longest stop string) per stop string.
    """

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        if isinstance(stop, str):
            stop = [stop]
        if any(not isinstance(s, str) or not s for s in stop):
            raise InvalidSamplingParamsError("stop strings must be non-empty strings")
        self.stop: tuple[str, ...] = tuple(dict.fromkeys(stop))
        self.include_stop_str_in_output = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)

    def check(self, text: str, num_new_chars: int) -> StopMatch | None:
        """Look for a stop string ending inside the last ``num_new_chars`` characters of ``text``.

        Assumes earlier calls found nothing in the text before them. Returns None if none matched.
        """
        if not self.stop or num_new_chars <= 0:
            return None
        new_start = max(len(text) - num_new_chars, 0)
        best: tuple[int, int, str] | None = None  # (end, start, stop string)
        for stop_str in self.stop:
            start = text.find(stop_str, max(new_start - len(stop_str) + 1, 0))
            if start < 0:
                continue
            candidate = (start + len(stop_str), start, stop_str)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is None:
            return None
        end, start, stop_str = best
        return StopMatch(stop_str=stop_str, text=text[: end if self.include_stop_str_in_output else start])

    def num_held_back(self, text: str) -> int:
        """How many trailing characters of ``text`` could be the start of a stop string.

        A stream must not emit them yet: the next token may complete the stop string, and then
        they are cut (or, with ``include_stop_str_in_output``, emitted together at the end).
        """
        if not self.stop or not text:
            return 0
        last = text[-1]
        longest = 0
        for stop_str in self.stop:
            # A held suffix is a proper prefix of stop_str that ends with ``last``: try those, longest first.
            end = min(len(stop_str) - 1, len(text))
            while end > longest:
                index = stop_str.rfind(last, 0, end)
                if index < 0 or index + 1 <= longest:
                    break
                if text.endswith(stop_str[: index + 1]):
                    longest = index + 1
                    break
                end = index
        return longest
