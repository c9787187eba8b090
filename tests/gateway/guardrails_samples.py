"""Hypothesis strategies for valid entities of every built-in kind (checksums computed, not copied), and for
texts with entities planted among plain words; shared by the guardrails tests."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from corral.gateway.guardrails.validators import IBAN_LENGTHS, luhn_ok

ALNUM = string.ascii_letters + string.digits
# Words that no pattern can take for part of an entity, whatever stands beside them.
FILLER_WORDS = ["the", "report", "is", "ready", "please", "send", "it", "to", "me", "and", "call", "later",
                "thanks", "we", "met", "at", "noon", "here", "is", "my", "note", "about", "budget"]
SEPARATORS = [" ", "\n", ", ", ": ", " (", ") ", ". ", "\t", " - "]


def luhn_complete(prefix_and_body: str) -> str:
    """Appends the check digit that makes the number pass the Luhn check."""
    for digit in "0123456789":
        if luhn_ok(prefix_and_body + digit):
            return prefix_and_body + digit
    raise AssertionError("unreachable: one digit always completes a Luhn number")


def iban_complete(country: str, bban: str) -> str:
    """The IBAN of a country and account number (BBAN), with its mod-97 check digits."""
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(char, 36)) for char in rearranged)) % 97
    return f"{country}{check:02d}{bban}"


def grouped(text: str, separator: str, size: int = 4) -> str:
    return separator.join(text[i:i + size] for i in range(0, len(text), size))


@st.composite
def credit_cards(draw) -> str:
    prefix = draw(st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "65", "35"]))
    length = 15 if prefix in ("34", "37") else 16
    body = draw(st.text("0123456789", min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1))
    number = luhn_complete(prefix + body)
    return grouped(number, draw(st.sampled_from(["", " ", "-"])))


@st.composite
def ibans(draw) -> str:
    country = draw(st.sampled_from(["DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE", "NO", "PL"]))
    bban = draw(st.text(string.digits + "ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=IBAN_LENGTHS[country] - 4,
                        max_size=IBAN_LENGTHS[country] - 4))
    return grouped(iban_complete(country, bban), draw(st.sampled_from(["", " "])))


@st.composite
def us_ssns(draw) -> str:
    area = draw(st.integers(1, 899).filter(lambda n: n != 666))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    separator = draw(st.sampled_from(["-", " "]))
    return f"{area:03d}{separator}{group:02d}{separator}{serial:04d}"


@st.composite
def emails(draw) -> str:
    local = draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))
    local += draw(st.sampled_from(["", ".smith", "+news", "_2"]))
    domain = draw(st.text(string.ascii_lowercase, min_size=2, max_size=10))
    return f"{local}@{domain}.{draw(st.sampled_from(['com', 'org', 'co.uk', 'io', 'de']))}"


@st.composite
def phones(draw) -> str:
    digits = st.text(string.digits, min_size=4, max_size=4)
    area, exchange = draw(st.integers(200, 999)), draw(st.integers(200, 999))
    return draw(st.sampled_from([
        f"({area}) {exchange}-{draw(digits)}", f"{area}-{exchange}-{draw(digits)}", f"{area}.{exchange}.{draw(digits)}",
        f"+1 {area} {exchange} {draw(digits)}", f"+44 20 {draw(digits)} {draw(digits)}", f"+33 1 23 45 {draw(digits)[:2]} 89",
    ]))


@st.composite
def ip_addresses(draw) -> str:
    if draw(st.booleans()):
        octets = [draw(st.integers(1, 223))] + [draw(st.integers(0, 255)) for _ in range(3)]
        if octets[0] == 127:
            octets[0] = 10
        return ".".join(map(str, octets))
    groups = [f"{draw(st.integers(0, 0xffff)):x}" for _ in range(4)]
    return f"2001:db8:{groups[0]}:{groups[1]}::{draw(st.integers(1, 9))}{groups[2][:3]}"


@st.composite
def api_keys(draw) -> str:
    random_part = draw(st.text(ALNUM, min_size=40, max_size=40).filter(
        lambda text: any(c.isdigit() for c in text) and any(c.isalpha() for c in text) and len(set(text)) > 12))
    upper = "".join(c for c in random_part.upper() if c.isalnum())
    return draw(st.sampled_from([
        f"sk-proj-{random_part}", f"sk-{random_part[:32]}", f"ghp_{random_part[:36]}", f"AKIA{upper[:15]}7",
        f"xoxb-1234-{random_part[:24]}", f"AIza{random_part[:35]}", f"sk_live_{random_part[:24]}",
    ]))


@st.composite
def private_keys(draw) -> str:
    lines = draw(st.lists(st.text(ALNUM + "+/", min_size=64, max_size=64), min_size=1, max_size=4))
    label = draw(st.sampled_from(["RSA ", "EC ", "OPENSSH ", ""]))
    newline = draw(st.sampled_from(["\n", "\\n"]))
    body = newline.join(lines) + newline + "AB=="
    return f"-----BEGIN {label}PRIVATE KEY-----{newline}{body}{newline}-----END {label}PRIVATE KEY-----"


@st.composite
def secret_assignments(draw) -> tuple[str, str]:
    """``(text, secret)``: only the value is the entity."""
    value = draw(st.text(ALNUM + "!#%", min_size=20, max_size=28).filter(
        lambda text: sum(c.isdigit() for c in text) > 2 and sum(c.isalpha() for c in text) > 6 and len(set(text)) > 10))
    name = draw(st.sampled_from(["api_key", "DB_PASSWORD", "client_secret", "auth_token"]))
    operator = draw(st.sampled_from(["=", ": ", " = "]))
    return f"{name}{operator}{value}", value


ENTITY_STRATEGIES = {"credit_card": credit_cards(), "iban": ibans(), "us_ssn": us_ssns(), "email": emails(),
                     "phone": phones(), "ip_address": ip_addresses(), "api_key": api_keys(),
                     "private_key": private_keys()}


@st.composite
def planted_texts(draw, max_entities: int = 5) -> tuple[str, list[str]]:
    """A text of plain words with entities of every kind planted in it, and the planted secrets (for a
    ``name = value`` assignment, the value)."""
    parts: list[str] = []
    planted: list[str] = []
    for _ in range(draw(st.integers(1, max_entities))):
        parts.append(" ".join(draw(st.lists(st.sampled_from(FILLER_WORDS), max_size=5))))
        parts.append(draw(st.sampled_from(SEPARATORS)))
        kind = draw(st.sampled_from([*ENTITY_STRATEGIES, "secret"]))
        if kind == "secret":
            text, secret = draw(secret_assignments())
        else:
            text = secret = draw(ENTITY_STRATEGIES[kind])
        parts.append(text)
        planted.append(secret)
        parts.append(draw(st.sampled_from(SEPARATORS)))
    parts.append(" ".join(draw(st.lists(st.sampled_from(FILLER_WORDS), max_size=5))))
    return "".join(parts), planted
