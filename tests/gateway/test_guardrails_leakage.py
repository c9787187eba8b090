"""System prompt leakage: verbatim runs of the prompt's words in an answer, one-shot and streamed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.guardrails.leakage import (
    LEAK_LABEL,
    LeakStreamMasker,
    SystemPromptIndex,
    find_leaks,
    mask_leaks,
)

PROMPT = ("You are Aria, the support assistant for Northwind Bank. Never disclose internal fee schedules. Always "
          "verify the customer's identity with two security questions before discussing account details.")
INDEX = SystemPromptIndex(PROMPT, min_words=8)
OTHER_WORDS = ["hello", "thanks", "your", "account", "is", "ready", "the", "bank", "we", "can", "help", "today"]


def one_shot(text: str, index: SystemPromptIndex = INDEX) -> str:
    return mask_leaks(text, find_leaks(text, index))


def test_a_copied_sentence_is_a_leak_whatever_its_case_and_punctuation():
    text = "Sure: ALWAYS verify the customer's identity, with two security questions!"
    [leak] = find_leaks(text, INDEX)
    assert text[leak.start:leak.end] == "ALWAYS verify the customer's identity, with two security questions"
    assert leak.num_words == 10
    assert one_shot(text) == f"Sure: {LEAK_LABEL}!"


def test_a_shorter_overlap_is_not_a_leak():
    assert find_leaks("I am the support assistant for Northwind Bank, how can I help?", INDEX) == []


def test_overlapping_runs_merge_into_one_leak():
    # Two runs that share words ("fee schedules. Always verify") are one span.
    text = "Never disclose internal fee schedules. Always verify the customer's identity with two security questions."
    assert len(find_leaks(text, INDEX)) == 1


def test_the_ngram_prefilter_agrees_with_the_exact_runs():
    words = "never disclose internal fee schedules always verify the".split()
    assert INDEX.could_leak(words)
    assert not INDEX.could_leak(words[:7])  # seven words: shorter than min_words
    assert not INDEX.could_leak("never disclose internal fee schedules always verify cats".split())


def test_min_words_sets_the_length_of_a_leak():
    text = "the support assistant for Northwind Bank"
    assert find_leaks(text, SystemPromptIndex(PROMPT, min_words=6))
    assert not find_leaks(text, SystemPromptIndex(PROMPT, min_words=7))


def stream(text: str, cuts: list[int]) -> tuple[str, LeakStreamMasker]:
    masker = LeakStreamMasker(INDEX)
    bounds = [0, *cuts, len(text)]
    output = "".join(masker.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])) + masker.flush()
    return output, masker


@st.composite
def answers(draw) -> str:
    prompt_words = PROMPT.split()
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            start = draw(st.integers(0, len(prompt_words) - 1))
            parts.append(" ".join(prompt_words[start:start + draw(st.integers(1, 14))]))
        else:
            parts.append(" ".join(draw(st.lists(st.sampled_from(OTHER_WORDS), min_size=1, max_size=6))))
    return draw(st.sampled_from([" ", "\n", ", "])).join(parts)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_one_shot_masking_and_never_emits_a_leaked_run(data):
    text = data.draw(answers())
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=30)))
    output, masker = stream(text, cuts)
    assert output == one_shot(text)
    assert [(s.start, s.end) for s in masker.leaks] == [(s.start, s.end) for s in find_leaks(text, INDEX)]
    assert masker.leaked == bool(masker.leaks)


def test_the_stream_holds_back_only_a_run_that_could_still_become_a_leak():
    masker = LeakStreamMasker(INDEX)
    assert masker.feed("Hello there, ") == "Hello there, "
    assert masker.feed("always verify the customer's ") == ""  # four prompt words in a row, held
    assert masker.feed("birthday cake. ") == "always verify the customer's birthday cake. "
    assert masker.feed("Never disclose internal fee schedules. Always verify the ") == ""
    assert masker.leaked
    assert masker.feed("weather") == ""  # until "weather" ends, the run it may continue is held
    assert masker.feed(".") == f"{LEAK_LABEL} weather."
    assert masker.flush() == ""
