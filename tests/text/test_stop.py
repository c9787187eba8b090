"""corral.text.stop: stop strings found in one chunk or across chunks, and never streamed in part."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import InvalidSamplingParamsError
from corral.text.stop import StopChecker, StopMatch


def simulate(checker: StopChecker, chunks: Sequence[str]) -> tuple[str, list[str], StopMatch | None]:
    """Feed ``chunks`` the way an output processor would; return (final text, streamed pieces, match)."""
    text, streamed, pieces = "", "", []
    for chunk in chunks:
        text += chunk
        match = checker.check(text, len(chunk))
        if match is not None:
            assert match.text.startswith(streamed), "streamed text must never be taken back"
            pieces.append(match.text[len(streamed) :])
            return match.text, pieces, match
        safe = text[: len(text) - checker.num_held_back(text)]
        assert safe.startswith(streamed)
        pieces.append(safe[len(streamed) :])
        streamed = safe
    pieces.append(text[len(streamed) :])  # finished for another reason: release what was held
    return text, pieces, None


def test_match_inside_one_chunk() -> None:
    checker = StopChecker(["\n\n", "END"])
    match = checker.check("Hello END and more", len("Hello END and more"))
    assert match == StopMatch(stop_str="END", text="Hello ")


def test_match_across_chunks() -> None:
    final, pieces, match = simulate(StopChecker(["STOP"]), ["Say S", "TO", "P now"])
    assert final == "Say " and match is not None and match.stop_str == "STOP"
    assert pieces == ["Say ", "", ""]  # "S" and "STO" were held back, then dropped


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
    final, pieces, match = simulate(StopChecker(["STOP"]), ["a ST", "OVE b"])
    assert match is None and final == "a STOVE b"
    assert pieces == ["a ", "STOVE b", ""]


def test_include_stop_str_in_output() -> None:
    final, _, match = simulate(StopChecker(["STOP"], include_stop_str_in_output=True), ["x S", "TOP y"])
    assert final == "x STOP" and match is not None and match.stop_str == "STOP"


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


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=30),
    stops=st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
    include=st.booleans(),
)
def test_chunking_does_not_change_the_result(
    text: str, stops: list[str], cuts: list[int], include: bool
) -> None:
    checker = StopChecker(stops, include_stop_str_in_output=include)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    by_char = simulate(checker, list(text))
    final, pieces, match = simulate(checker, chunks)
    assert (final, match) == (by_char[0], by_char[2])
    assert "".join(pieces) == final
    if match is None:
        assert final == text and not any(s in text for s in stops)
    else:
        cut = final if include else final + match.stop_str
        assert text.startswith(cut) and not any(s in cut[:-1] for s in stops)
