"""The validators that turn regex candidates into entities: checksums, number ranges, address parsing,
randomness of secrets, and loading a user's own validator."""

from __future__ import annotations

import pytest

from corral.gateway.guardrails import validators
from tests.gateway.guardrails_samples import iban_complete, luhn_complete


def user_validator_even_digits(candidate: str) -> bool:
    """A user's validator, loaded by path in the tests: accepts an even number of digits."""
    return sum(char.isdigit() for char in candidate) % 2 == 0


@pytest.mark.parametrize("number", ["4111111111111111", "5500000000000004", "378282246310005", "6011000990139424",
                                    luhn_complete("453914880343646")])
def test_luhn_accepts_valid_card_numbers(number):
    assert validators.luhn_ok(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "5500000000000005"])
def test_luhn_refuses_a_wrong_check_digit(number):
    assert not validators.luhn_ok(number)


def test_a_card_candidate_is_trimmed_to_the_card_before_a_trailing_number():
    assert validators.credit_card("4111 1111 1111 1111 7") == len("4111 1111 1111 1111")
    assert validators.credit_card("4111 1111 1111 1111") == len("4111 1111 1111 1111")


@pytest.mark.parametrize("candidate", ["4111 1111-1111 1111", "1111111111111117", "4444444444444448"[:15] + "4",
                                       "4111111111111112"])
def test_a_card_needs_one_separator_style_a_network_digit_and_the_luhn_check(candidate):
    assert validators.credit_card(candidate) is None


@pytest.mark.parametrize("iban", ["DE89370400440532013000", "GB29NWBK60161331926819", "FR1420041010050500013M02606",
                                  "NO9386011117947", iban_complete("PL", "109010140000071219812874")])
def test_iban_mod_97(iban):
    assert validators.iban_ok(iban)


@pytest.mark.parametrize("iban", ["DE88370400440532013000", "GB29NWBK6016133192681", "XX89370400440532013000"])
def test_iban_refuses_a_wrong_check_or_length_or_country(iban):
    assert not validators.iban_ok(iban)


def test_an_iban_candidate_ends_at_its_country_length():
    assert validators.iban("DE89 3704 0044 0532 0130 00 NEXT") == len("DE89 3704 0044 0532 0130 00")
    assert validators.iban("DE89 3704 0044 0532 0130 00") == len("DE89 3704 0044 0532 0130 00")
    assert validators.iban("DE89370400440532013000AB") is None  # no space: it did not end there


@pytest.mark.parametrize("ssn", ["000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456", "123-00-4567",
                                 "123-45-0000", "078-05-1120", "219-09-9999"])
def test_ssn_never_issued_ranges_are_refused(ssn):
    assert validators.us_ssn(ssn) is None


@pytest.mark.parametrize("ssn", ["123-45-6789", "899-99-9999", "001-01-0001", "536 22 1847"])
def test_ssn_issuable_numbers_are_accepted(ssn):
    assert validators.us_ssn(ssn) == len(ssn)


@pytest.mark.parametrize(("candidate", "accepted"), [
    ("10.0.0.1", True), ("203.0.113.45/24", True), ("127.0.0.1", False), ("0.0.0.0", False),
    ("255.255.255.255", False)])
def test_ipv4(candidate, accepted):
    assert (validators.ipv4(candidate) is not None) is accepted


@pytest.mark.parametrize(("candidate", "accepted"), [
    ("2001:db8::1", True), ("fe80::1:", True), ("dead::beef", False), ("a::b", False), ("::1", False),
    ("12:30:45", False), ("00:1a:2b:3c:4d:5e", False)])
def test_ipv6(candidate, accepted):
    assert (validators.ipv6(candidate) is not None) is accepted


@pytest.mark.parametrize(("candidate", "accepted"), [
    ("jane@example.com", True), ("icon@2x.png", False), ("user@host.json", False), ("a@b.co.uk", True)])
def test_email_refuses_file_names(candidate, accepted):
    assert (validators.email(candidate) is not None) is accepted


@pytest.mark.parametrize(("value", "accepted"), [
    ("Tr0ub4dor&3", True), ("9f8e7d6c5b4a3928", True), ("xK9#mQ", True), ("required", False),
    ("get_token", False), ("settings.SECRET_KEY", False), ("$OPENAI_API_KEY", False), ("********", False),
    ("12345678", False), ("changeme", False), ("<your-key>", False), ("os.environ", False), ("hunter", False)])
def test_a_secret_value_is_neither_placeholder_code_word_nor_number(value, accepted):
    assert (validators.secret_value(value) is not None) is accepted


@pytest.mark.parametrize(("key", "accepted"), [
    ("sk-proj-4fT9qL2mX8vB1nR7cW3zY6pK0sJ5hG2d", True), ("sk-this-is-not-a-real-key-at-all", False),
    ("ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", False)])
def test_a_vendor_key_is_random(key, accepted):
    assert (validators.vendor_key(key) is not None) is accepted


def test_a_user_validator_is_loaded_by_module_path_and_may_return_bool():
    validate = validators.resolve_validator("tests.gateway.test_guardrails_validators:user_validator_even_digits")
    assert validate("EMP-1234") == len("EMP-1234")
    assert validate("EMP-123") is None


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "unknown validator 'nope'"), ("tests.gateway.missing_module:f", "cannot load"),
    ("tests.gateway.test_guardrails_validators:missing", "cannot load"), (":f", "expected 'module:function'")])
def test_an_unknown_validator_is_refused_with_its_name(name, message):
    with pytest.raises(ValueError, match=message):
        validators.resolve_validator(name)
