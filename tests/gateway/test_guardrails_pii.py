"""The entity detector: overlaps between patterns, validators that skip one character on, context words, a
user's own patterns, and the liveness test the stream masker relies on."""

from __future__ import annotations

from corral.gateway.guardrails.patterns import EntityPattern
from corral.gateway.guardrails.pii import EntityDetector

DETECTOR = EntityDetector()


def kinds(text: str, detector: EntityDetector = DETECTOR) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in detector.find(text)]


def test_mask_replaces_each_entity_with_its_kind():
    masked, findings = DETECTOR.mask("mail jane@example.com or call (415) 555-0132.")
    assert masked == "mail [EMAIL] or call [PHONE]."
    assert [f.kind for f in findings] == ["email", "phone"]


def test_a_vendor_key_in_an_assignment_is_an_api_key_not_a_generic_secret():
    text = "export OPENAI_API_KEY=sk-3xZ9mQ4wL7pV2nB8kR1tY6cF0hJ5gD3s"
    assert kinds(text) == [("api_key", "sk-3xZ9mQ4wL7pV2nB8kR1tY6cF0hJ5gD3s")]
    assert DETECTOR.mask(text)[0] == "export OPENAI_API_KEY=[API_KEY]"


def test_only_the_value_of_an_assignment_is_masked():
    assert DETECTOR.mask("password: 'S3cure!Passw0rd' ok")[0] == "password: '[SECRET]' ok"


def test_a_failed_candidate_does_not_hide_a_valid_entity_inside_it():
    # "1 4111 1111 1111 1111" is a 17-digit candidate that fails; the card starts one number later.
    assert kinds("ref 1 4111 1111 1111 1111 end") == [("credit_card", "4111 1111 1111 1111")]


def test_context_words_are_required_before_a_bare_number():
    assert kinds("my SSN: 482019374") == [("us_ssn", "482019374")]
    assert kinds("order 482019374") == []
    assert kinds("phone 020 7946 0018") == [("phone", "020 7946 0018")]
    assert kinds("parts 020 7946 0018") == []


def test_deny_context_words_drop_a_version_number_that_looks_like_an_address():
    assert kinds("version 10.2.3.4") == []
    assert kinds("host 10.2.3.4") == [("ip_address", "10.2.3.4")]


def test_a_user_pattern_with_a_validator_and_context_words():
    employee = EntityPattern("employee_id", "employee_id", "pii", r"\bEMP-\d{4,6}\b",
                             validator="tests.gateway.test_guardrails_validators:user_validator_even_digits",
                             context_words=("employee",))
    detector = EntityDetector([employee])
    assert kinds("employee EMP-1234 joined", detector) == [("employee_id", "EMP-1234")]
    assert kinds("employee EMP-12345 joined", detector) == []  # odd digits: the validator says no
    assert kinds("ticket EMP-1234 closed", detector) == []  # no context word
    assert detector.mask("the employee EMP-123456.")[0] == "the employee [EMPLOYEE_ID]."


def test_liveness_holds_a_possible_entity_and_releases_prose():
    text = "mail jane.doe@exa"
    assert DETECTOR.is_live(text, text.index("jane"))
    assert not DETECTOR.is_live("mail me ", 0)
    assert not DETECTOR.is_live("the report ", 4)


def test_liveness_of_a_word_boundary_at_the_end_of_the_text():
    # "ID: \b" needs a word character after the space: the regex module's partial match says no, the sentinel yes.
    boundary = EntityPattern("tag", "tag", "pii", r"ID: \b")
    detector = EntityDetector([boundary])
    assert detector.is_live("x ID: ", 2)
    assert not detector.is_live("x IX: ", 2)
