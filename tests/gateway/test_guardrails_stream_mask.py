"""The stream masker: whatever the chunking, its output is the one-shot masked text and never holds any part
of a planted entity; its hold-back stays a word in prose and covers an entity split anywhere."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.gateway.guardrails.pii import EntityDetector
from corral.gateway.guardrails.stream_mask import StreamMasker
from tests.gateway.guardrails_samples import planted_texts

DETECTOR = EntityDetector()
# Shorter runs of an entity's characters can occur in the words around it (a card's "4111" in a phone number).
LEAK_WINDOW = 8


def stream(text: str, cuts: list[int], detector: EntityDetector = DETECTOR) -> tuple[str, StreamMasker]:
    masker = StreamMasker(detector)
    bounds = [0, *cuts, len(text)]
    output = [masker.feed(text[start:end]) for start, end in zip(bounds, bounds[1:])]
    output.append(masker.flush())
    return "".join(output), masker


def leaked(output: str, planted: list[str]) -> list[str]:
    return [entity for entity in planted for i in range(len(entity) - LEAK_WINDOW + 1)
            if entity[i:i + LEAK_WINDOW] in output]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_chunking_gives_the_one_shot_masking_and_leaks_no_planted_entity(data):
    text, planted = data.draw(planted_texts())
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=40)))
    expected, _ = DETECTOR.mask(text)
    output, masker = stream(text, cuts)
    assert output == expected
    assert not leaked(expected, planted), "the one-shot masking missed a planted entity"
    assert [(f.kind, f.start, f.end) for f in masker.findings] == [(f.kind, f.start, f.end) for f in DETECTOR.find(text)]


@settings(max_examples=25, deadline=None)
@given(planted_texts(max_entities=3))
def test_character_by_character_streaming_leaks_nothing(sample):
    text, planted = sample
    output, _ = stream(text, list(range(1, len(text))))
    assert output == DETECTOR.mask(text)[0]
    assert not leaked(output, planted)


def test_an_entity_split_mid_way_is_held_back_until_it_is_complete():
    masker = StreamMasker(DETECTOR)
    assert masker.feed("write to jane.do") == "write to "
    assert masker.feed("e@example.c") == ""
    assert masker.feed("om today") == "[EMAIL] "  # "today" could still start an e-mail address
    assert masker.flush() == "today"


def test_a_card_number_is_held_while_more_digits_could_follow():
    masker = StreamMasker(DETECTOR)
    assert masker.feed("card 4111 1111 1111 1111") == "card "
    assert masker.feed(" 2") == ""  # "4111 1111 1111 1111 2..." could still be a 17-19 digit card
    assert masker.feed("3 times") == "[CREDIT_CARD] 23 "
    assert masker.flush() == "times"


def test_a_private_key_is_held_whole_and_released_as_one_label():
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nAB==\n-----END PRIVATE KEY-----"
    masker = StreamMasker(DETECTOR)
    output = [masker.feed(key[i:i + 5]) for i in range(0, len(key), 5)]
    assert "".join(output) == ""
    assert masker.feed("\nbye now.") == "[PRIVATE_KEY]\nbye "  # "now." could still begin now.it@example.com
    assert masker.flush() == "now."


def test_prose_is_held_back_by_at_most_its_last_word():
    prose = ("The committee reviewed the quarterly figures and agreed that the new office should open in spring, "
             "subject to the budget being approved by the board at its next meeting. ") * 3
    masker = StreamMasker(DETECTOR)
    for char in prose:
        masker.feed(char)
        assert masker.held_chars <= len("quarterly ")
    assert masker.max_held_chars <= len("quarterly ")


def test_flush_at_the_end_masks_an_entity_that_ends_the_stream():
    masker = StreamMasker(DETECTOR)
    assert masker.feed("reach me on +44 20 7946 0958") == "reach me on "
    assert masker.flush() == "[PHONE]"
