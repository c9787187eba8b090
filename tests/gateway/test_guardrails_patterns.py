"""The entity patterns: each built-in one finds its entity and not its look-alikes, every pattern is bounded
(the stream masker's hold-back depends on it), and a user's regex is measured and refused when unbounded."""

from __future__ import annotations

import pytest

from corral.gateway.guardrails.patterns import EntityPattern, builtin_patterns, measure, scoped
from corral.gateway.guardrails.pii import EntityDetector

DETECTOR = EntityDetector()

# (pattern name, text, the entity it must find)
POSITIVES = [
    ("email", "write to jane.doe+x@mail.example.org today", "jane.doe+x@mail.example.org"),
    ("phone_international", "call +44 20 7946 0958.", "+44 20 7946 0958"),
    ("phone_nanp", "call (415) 555-0132 now", "(415) 555-0132"),
    ("phone_nanp", "dial 1-800-555-0199.", "1-800-555-0199"),
    ("phone_national", "phone: 020 7946 0018", "020 7946 0018"),
    ("credit_card", "card 4111-1111-1111-1111, thanks", "4111-1111-1111-1111"),
    ("iban", "to DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    ("us_ssn", "SSN 536-22-1847.", "536-22-1847"),
    ("us_ssn_bare", "my ssn is 482019374", "482019374"),
    ("ipv4", "from 203.0.113.45 at noon", "203.0.113.45"),
    ("ipv6", "ping 2001:db8:85a3::8a2e:370:7334 now", "2001:db8:85a3::8a2e:370:7334"),
    ("aws_access_key_id", "key AKIA2E0A8F3B244C9986 here", "AKIA2E0A8F3B244C9986"),
    ("github_token", "ghp_R4nD0mT0k3nV4lu3Xy7Zq9Lm2Np5Rs8Tu1Vw3 leaked", "ghp_R4nD0mT0k3nV4lu3Xy7Zq9Lm2Np5Rs8Tu1Vw3"),
    ("openai_style_key", "use sk-proj-4fT9qL2mX8vB1nR7cW3zY6pK0sJ5hG2d", "sk-proj-4fT9qL2mX8vB1nR7cW3zY6pK0sJ5hG2d"),
    ("stripe_key", "Stripe('sk_live_51HxYz2eZvKYlo2C0aBcDeF')", "sk_live_51HxYz2eZvKYlo2C0aBcDeF"),
    ("slack_token", "xoxb-2048-1234567890-a1B2c3D4e5F6 ok", "xoxb-2048-1234567890-a1B2c3D4e5F6"),
    ("google_api_key", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY in", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("jwt", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("secret_assignment", "DB_PASSWORD=Tr0ub4dor&3xkcd", "Tr0ub4dor&3xkcd"),
    ("private_key", "x\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQ\n-----END EC PRIVATE KEY-----\nok",
     "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQ\n-----END EC PRIVATE KEY-----"),
    ("private_key", "key: |\n  -----BEGIN DSA PRIVATE KEY-----\n  MIIBuwIBAAKBgQC9\n  -----END DSA PRIVATE KEY-----",
     "-----BEGIN DSA PRIVATE KEY-----\n  MIIBuwIBAAKBgQC9\n  -----END DSA PRIVATE KEY-----"),
    ("private_key", "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----\\n",
     "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----"),
]

NEGATIVES = [
    "icon@2x.png and @property and user@localhost",
    "on 2024-05-06 at 10:30, ISBN 978-0-306-40615-7",
    "order 4111 1111 1111 1112 failed",  # fails the Luhn check
    "code DE88 3704 0044 0532 0130 00",  # fails mod-97
    "invalid SSN 666-12-3456 and 000-12-3456",
    "version 1.2.3.4, localhost 127.0.0.1, MAC 00:1a:2b:3c:4d:5e, std::vector",
    "sk-learn and sk-this-is-not-a-real-key-just-a-placeholder",
    "password = input() and token = get_token() and api_key=$API_KEY",
    "invoice 482019374 was paid",  # nine digits without SSN context
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0C\n-----END PUBLIC KEY-----",
]


@pytest.mark.parametrize(("name", "text", "entity"), POSITIVES)
def test_each_builtin_pattern_finds_its_entity(name, text, entity):
    found = [(f.pattern, text[f.start:f.end]) for f in DETECTOR.find(text)]
    assert (name, entity) in found


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_not_entities(text):
    assert DETECTOR.find(text) == []


def test_every_builtin_pattern_is_bounded_and_the_longest_is_the_private_key():
    widths = {pattern.name: pattern.shape.max_width for pattern in builtin_patterns()}
    assert max(widths, key=widths.get) == "private_key"
    assert widths["private_key"] <= 25_000
    assert all(width <= 7_100 for name, width in widths.items() if name != "private_key")
    assert widths["email"] <= 601


@pytest.mark.parametrize(("regex", "message"), [
    (r"EMP-\d+", "bound its length"), (r"EMP-\d*", "bound its length"), (r"^EMP-\d{6}", "anchors"),
    (r"EMP-\d{6}$", "anchors"), (r"\d{0,3}", "empty"), (r"EMP-(\d{6}", "not a valid regex"),
    (r"(?<=\w+)EMP", "lookaround must bound"),
])
def test_a_pattern_that_could_not_stream_is_refused(regex, message):
    with pytest.raises(ValueError, match=message):
        measure(regex)


def test_measure_reports_width_lookbehind_and_word_boundaries():
    shape = measure(r"(?<![\w.]{2})\bEMP-\d{6}\b")
    assert (shape.max_width, shape.max_lookbehind, shape.word_boundary, shape.backreference) == (10, 2, True, False)
    assert measure(r"(\d)-\1").backreference


def test_scoped_turns_leading_global_flags_into_a_group():
    assert scoped("(?i)abc") == "(?i:abc)"
    assert scoped("abc") == "(?:abc)"


def test_a_pattern_whose_secret_group_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="secret_group"):
        EntityPattern("x", "x", "secret", r"key=(?P<value>\w{8})", secret_group="secret")
