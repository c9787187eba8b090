"""Checks that turn a regex candidate into an entity: checksums (Luhn, IBAN mod-97), number ranges (US SSN),
address parsing (IPv4/IPv6) and randomness (secrets). A pattern's regex finds candidates; its validator
decides, from the candidate's text alone (never the text after it, so that a stream can decide as soon as the
candidate is complete).

A validator returns the number of characters of the candidate that are the entity (usually all of it), or
None when the candidate is not one. Only the IBAN check shortens: its regex may run on into the next word,
and the country's IBAN length says where the IBAN ends.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

Validator = Callable[[str], "int | None"]

# ISO 13616 IBAN lengths by country (SWIFT's IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

# File extensions that look like top-level domains in ``icon@2x.png`` or ``user@host.json``; none is a TLD.
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "js", "mjs",
                       "ts", "tsx", "jsx", "css", "scss", "html", "htm", "json", "yaml", "yml", "toml", "txt",
                       "csv", "pdf", "lock", "log", "tmp", "bak", "exe", "dll", "whl"})

_PLACEHOLDER_SECRET = re.compile(r"(?i)^(?:x+|\*+|\.+|<[^>]*>?|\{\{.*|\$\{?\w+\}?|your[_-]?\w*|changeme\w*|"
                                 r"placeholder\w*|example\w*|redacted|none|null|true|false|undefined|"
                                 r"(?:os\.|process\.|env\.|settings\.|config\.).*)$")


def digits_of(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def credit_card(candidate: str) -> int | None:
    """13-19 digits, one separator style throughout, a card network's first digit (2-6) and the Luhn check.
    A candidate that fails whole may be a card followed by another number (``4111 1111 1111 1111 7``): its
    prefixes that end at a separator are tried, longest first."""
    if " " in candidate and "-" in candidate:
        return None
    ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 0, -1) if candidate[i] in " -"]
    for end in ends:
        digits = digits_of(candidate[:end])
        if len(digits) < 13:
            break
        if len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits):
            return end
    return None


def iban_ok(compact: str) -> bool:
    """The mod-97 check of ISO 13616: country and check digits moved to the end, letters as 10..35."""
    if len(compact) != IBAN_LENGTHS.get(compact[:2], -1) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def iban(candidate: str) -> int | None:
    """Keeps the country's IBAN length of characters (spaces between groups do not count); the rest of the
    candidate, if any, must start at a space (the IBAN ended there, the next word began)."""
    length = IBAN_LENGTHS.get(candidate[:2])
    if length is None:
        return None
    kept, compact = 0, []
    while kept < len(candidate) and len(compact) < length:
        if candidate[kept] != " ":
            compact.append(candidate[kept])
        kept += 1
    if len(compact) != length or (kept < len(candidate) and candidate[kept] != " "):
        return None
    return kept if iban_ok("".join(compact)) else None


def us_ssn(candidate: str) -> int | None:
    """The SSA's never-issued numbers are refused: area 000, 666 or 900-999, group 00, serial 0000, and two
    numbers published in advertising (078-05-1120, 219-09-9999)."""
    digits = digits_of(candidate)
    if len(digits) != 9:
        return None
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    if digits in ("078051120", "219099999"):
        return None
    return len(candidate)


def phone_international(candidate: str) -> int | None:
    """E.164: a country code and 8 to 15 digits in all."""
    return len(candidate) if 8 <= len(digits_of(candidate)) <= 15 else None


def phone_national(candidate: str) -> int | None:
    return len(candidate) if 9 <= len(digits_of(candidate)) <= 11 else None


def ipv4(candidate: str) -> int | None:
    """Any address but the unspecified, loopback and broadcast ones, which identify nobody."""
    address = ipaddress.IPv4Address(candidate.split("/")[0])
    if address.is_unspecified or address.is_loopback or str(address) == "255.255.255.255":
        return None
    return len(candidate)


def ipv6(candidate: str) -> int | None:
    """A parseable address with at least one decimal digit (``dead::beef`` and C++'s ``a::b`` parse too). The
    candidate may have taken a colon of the sentence (``at fe80::1: it``), which is given back."""
    if candidate.endswith(":") and not candidate.endswith("::"):
        candidate = candidate[:-1]
    text = candidate.split("/")[0]
    if not any(char.isdigit() for char in text):
        return None
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return None if address.is_unspecified or address.is_loopback else len(candidate)


def email(candidate: str) -> int | None:
    domain = candidate.rsplit("@", 1)[1].lower()
    if domain.rsplit(".", 1)[1] in _NOT_TLDS or re.match(r"\d+x\.", domain):  # icon@2x.png
        return None
    return len(candidate)


def shannon_entropy(text: str) -> float:
    """Bits per character of the text's own character distribution."""
    counts = Counter(text)
    return -sum(count / len(text) * math.log2(count / len(text)) for count in counts.values())


def vendor_key(candidate: str) -> int | None:
    """A vendor-prefixed key: random, so letters and digits both occur (``sk-this-is-not-a-key`` has none)."""
    body = re.sub(r"^[A-Za-z]+[-_](?:[a-z]+[-_])?", "", candidate)
    has_digit = any(char.isdigit() for char in body)
    has_letter = any(char.isalpha() for char in body)
    return len(candidate) if has_digit and has_letter and shannon_entropy(body) >= 3.0 else None


def secret_value(candidate: str) -> int | None:
    """The value of ``password = ...``, ``api_key: ...``. The name already says it is a secret, so anything is
    one but a placeholder (``xxxx``, ``<your-key>``, ``${VAR}``), code (a call, an index, ``os.environ``...), a
    number, or a word or identifier (``required``, ``get_token``, ``settings.SECRET``); and it mixes character
    classes (two, from 8 characters; three, from 6)."""
    if _PLACEHOLDER_SECRET.match(candidate) or any(char in candidate for char in "()[]{}<>"):
        return None
    if candidate.isdigit() or re.fullmatch(r"[A-Za-z][a-z]*(?:[_.-][A-Za-z][a-z]*)*|[A-Z]+(?:_[A-Z]+)*", candidate):
        return None
    classes = sum((any(c.islower() for c in candidate), any(c.isupper() for c in candidate),
                   any(c.isdigit() for c in candidate), any(not c.isalnum() for c in candidate)))
    if classes >= 3 or (classes == 2 and len(candidate) >= 8):
        return len(candidate)
    return len(candidate) if len(candidate) >= 16 and shannon_entropy(candidate) >= 3.0 else None


def require_digit(candidate: str) -> int | None:
    return len(candidate) if any(char.isdigit() for char in candidate) else None


BUILTIN_VALIDATORS: dict[str, Validator] = {
    "luhn": lambda text: len(text) if luhn_ok(digits_of(text)) and digits_of(text) else None,
    "credit_card": credit_card,
    "iban": iban,
    "us_ssn": us_ssn,
    "phone_international": phone_international,
    "phone_national": phone_national,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "email": email,
    "vendor_key": vendor_key,
    "secret_value": secret_value,
    "require_digit": require_digit,
}


def load_callable(path: str) -> Callable:
    """``package.module:function`` -> the function (a user's validator or classifier named in the config)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{path!r}: expected 'module:function'")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{path!r}: cannot load: {error}") from None
    if not callable(target):
        raise ValueError(f"{path!r}: not callable")
    return target


def resolve_validator(name: str) -> Validator:
    """A built-in validator by name, or a user's ``module:function`` returning bool (or a length, or None)."""
    if name in BUILTIN_VALIDATORS:
        return BUILTIN_VALIDATORS[name]
    if ":" not in name:
        raise ValueError(f"unknown validator {name!r} (built-in: {', '.join(sorted(BUILTIN_VALIDATORS))}; "
                         "or 'module:function')")
    function = load_callable(name)

    def user_validator(candidate: str) -> int | None:
        result = function(candidate)
        if result is True:
            return len(candidate)
        if result is False or result is None:
            return None
        return int(result)

    return user_validator
