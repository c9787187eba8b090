"""corral.text.stop: stop strings found in one chunk or across chunks, and how much text may start one.

How the output processor streams with them is tested through the real processor in
tests/engine/test_output_processor.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import InvalidSamplingParamsError
from corral.text.stop import StopChecker, StopMatch


def test_match_inside_one_chunk() -> None:
    checker = StopChecker(["\n\n", "END"])
    match = checker.check("Hello END and more", len("Hello END and more"))
    assert match == StopMatch(stop_str="END", text="Hello ")


def test_match_across_chunks() -> None:
    """A stop string split over steps: held while incomplete, matched by the step that completes it."""
    checker = StopChecker(["STOP"])
    assert checker.check("Say S", 5) is None and checker.num_held_back("Say S") == 1
    assert checker.check("Say STO", 2) is None and checker.num_held_back("Say STO") == 3
    # only "P" is new, but the match reaches back into the held characters
    assert checker.check("Say STOP now", 5) == StopMatch(stop_str="STOP", text="Say ")


def test_hold_back_partial_prefixes() -> None:
    checker = StopChecker(["<|end|>", "abc"])
    assert checker.num_held_back("text <|en") == 4
    assert checker.num_held_back("text <|end") == 5
    assert checker.num_held_back("text <|x") == 0
    assert checker.num_held_back("xab") == 2
    assert checker.num_held_back("") == 0
    assert StopChecker([]).num_held_back("abc") == 0
    # "aaa" is no prefix of "aab", but its suffix "aa" is.
    assert StopChecker(["aab"]).num_held_back("xaaa") == 2


def test_false_start_is_released() -> None:
    checker = StopChecker(["STOP"])
    assert checker.num_held_back("a ST") == 2
    assert checker.check("a STOVE b", 5) is None
    assert checker.num_held_back("a STOVE b") == 0


def test_include_stop_str_in_output() -> None:
    checker = StopChecker(["STOP"], include_stop_str_in_output=True)
    assert checker.check("x STOP y", 5) == StopMatch(stop_str="STOP", text="x STOP")


def test_earliest_ending_match_wins() -> None:
    checker = StopChecker(["abc", "b"])
    assert checker.check("xxabc", 5) == StopMatch(stop_str="b", text="xxa")
    # Same end: the longer stop string wins (it cuts more).
    assert StopChecker(["c", "bc"]).check("abc", 3) == StopMatch(stop_str="bc", text="a")


def test_only_new_text_is_searched() -> None:
    checker = StopChecker(["STOP"])
    # A match entirely before the new characters was already reported (or the caller stopped).
    assert checker.check("STOP and then more", 5) is None
    assert checker.check("xxSTOP", 2) is not None
    assert checker.check("anything", 0) is None


def test_no_stop_strings() -> None:
    checker = StopChecker([])
    assert checker.check("whatever", 8) is None
    assert checker.max_stop_len == 0


@pytest.mark.parametrize("bad", [[""], ["ok", ""], [None]])
def test_invalid_stop_strings(bad: list) -> None:
    with pytest.raises(InvalidSamplingParamsError):
        StopChecker(bad)


def test_single_string_and_duplicates() -> None:
    assert StopChecker("END").stop == ("END",)
    assert StopChecker(["a", "a", "b"]).stop == ("a", "b")


_ALPHABET = "ab\n<>"


def brute_first_match(text: str, stops: list[str], after: int) -> tuple[int, str] | None:
    """(end, stop string): the first stop string to complete at an end past ``after``, the longest of ties."""
    for end in range(after + 1, len(text) + 1):
        hits = [s for s in stops if text.endswith(s, 0, end)]
        if hits:
            return end, max(hits, key=len)
    return None


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=30),
    stops=st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3),
    data=st.data(),
    include=st.booleans(),
)
def test_check_finds_what_a_brute_force_search_finds(
    text: str, stops: list[str], data: st.DataObject, include: bool
) -> None:
    """check() against every end position tried in turn, for any split into old (already searched) and new text."""
    old = data.draw(st.integers(0, len(text)))
    first = brute_first_match(text, stops, 0)
    if first is not None and first[0] <= old:
        old = first[0] - 1  # the contract: the old text held no complete stop string
    match = StopChecker(stops, include_stop_str_in_output=include).check(text, len(text) - old)
    expected = brute_first_match(text, stops, old)
    if expected is None:
        assert match is None
    else:
        end, stop = expected
        assert match == StopMatch(stop_str=stop, text=text[:end] if include else text[: end - len(stop)])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=20),
    stops=st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=5), min_size=1, max_size=3),
)
def test_held_back_is_the_longest_tail_that_starts_a_stop_string(text: str, stops: list[str]) -> None:
    """num_held_back() against every tail length tried: the longest tail that is a proper prefix of a stop string."""
    expected = max(k for s in stops for k in range(min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k]))
    assert StopChecker(stops).num_held_back(text) == expected


def test_invalid_stop_string_message() -> None:
    with pytest.raises(InvalidSamplingParamsError, match=r"^stop strings must be non-empty strings$"):
        StopChecker(["ok", ""])


def test_hold_back_keeps_the_longest_over_later_shorter_prefixes() -> None:
    # "acX" holds "ac" (2); "cQQQ", tried after it, holds only "c" (1), which must not lower the answer.
    assert StopChecker(["acX", "cQQQ"]).num_held_back("xac") == 2
    assert StopChecker(["acX", "cQQQ"]).num_held_back("ac") == 2


def test_match_ending_before_the_new_characters_is_not_reported() -> None:
    # "STOP" is text[2:6]; with only "x" new it ended a step earlier, so it is not this step's match.
    assert StopChecker(["STOP"]).check("abSTOPx", 1) is None
    assert StopChecker(["STOP"]).check("abSTOPx", 2) == StopMatch(stop_str="STOP", text="ab")
