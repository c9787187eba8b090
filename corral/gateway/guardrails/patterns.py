"""The entity patterns: what PII and secrets look like, as bounded regexes plus validators (validators.py).

Every pattern must bound its length (no ``+`` or ``*`` without an upper limit): the stream masker holds back a
trailing text only while it could still grow into a match, and a bounded pattern bounds that hold-back.
Patterns are matched with the ``regex`` module (whose partial matching the stream masker needs) in Python
``re`` syntax, which is also how a user's own patterns are checked at load (``re``'s parser measures widths).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import regex

from corral.gateway.guardrails.validators import Validator, resolve_validator

Category = Literal["pii", "secret"]

# Stream masking keeps this much already-emitted text as left context (lookbehinds, context words).
MAX_CONTEXT_CHARS = 64
_UNBOUNDED = 1 << 20  # re's parser reports MAXREPEAT-based widths for `*` and `+`; anything near it is unbounded


@dataclass(frozen=True)
class PatternShape:
    """What the stream masker needs to know of a regex: its longest match and whether a word boundary (``\\b``,
    ``\\B``) could depend on the character after the text seen so far."""

    max_width: int
    max_lookbehind: int
    word_boundary: bool
    backreference: bool


@dataclass(frozen=True)
class EntityPattern:
    """One kind of entity. ``regex`` finds candidates; ``validator`` (by name, see validators.py) accepts them;
    when ``context_words`` are given, one of them must occur in the ``context_chars`` characters before the
    candidate, and none of ``deny_context_words`` may. ``secret_group``: the named group that is masked, when
    only part of a match is the secret (``api_key=<secret>``)."""

    name: str
    kind: str
    category: Category
    regex: str
    validator: str | None = None
    context_words: tuple[str, ...] = ()
    deny_context_words: tuple[str, ...] = ()
    context_chars: int = 32
    secret_group: str | None = None
    compiled: regex.Pattern = field(init=False, repr=False, compare=False)
    shape: PatternShape = field(init=False, repr=False, compare=False)
    validate: Validator | None = field(init=False, repr=False, compare=False)
    context: regex.Pattern | None = field(init=False, repr=False, compare=False)
    deny_context: regex.Pattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.context_chars <= MAX_CONTEXT_CHARS:
            raise ValueError(f"context_chars must be between 0 and {MAX_CONTEXT_CHARS}")
        shape = measure(self.regex)
        if shape.max_lookbehind > MAX_CONTEXT_CHARS:
            raise ValueError(f"a lookbehind may look back at most {MAX_CONTEXT_CHARS} characters")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "compiled", regex.compile(self.regex))
        if self.secret_group is not None and self.secret_group not in self.compiled.groupindex:
            raise ValueError(f"secret_group {self.secret_group!r} is not a named group of the regex")
        object.__setattr__(self, "validate", resolve_validator(self.validator) if self.validator else None)
        object.__setattr__(self, "context", _word_alternation(self.context_words))
        object.__setattr__(self, "deny_context", _word_alternation(self.deny_context_words))

    @property
    def label(self) -> str:
        return f"[{self.kind.upper()}]"


def _word_alternation(words: tuple[str, ...]) -> regex.Pattern | None:
    if not words:
        return None
    return regex.compile(r"(?i)(?<!\w)(?:" + "|".join(regex.escape(word) for word in words) + r")(?!\w)")


def _walk(parsed) -> Iterator[tuple]:
    """Every (opcode, argument) node of a pattern parsed by ``re._parser``, depth first."""
    from re import _constants as sre

    for op, argument in parsed:
        yield op, argument
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            yield from _walk(argument[2])
        elif op is sre.SUBPATTERN:
            yield from _walk(argument[3])
        elif op is sre.BRANCH:
            for branch in argument[1]:
                yield from _walk(branch)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            yield from _walk(argument[1])
        elif op is sre.ATOMIC_GROUP:
            yield from _walk(argument)
        elif op is sre.GROUPREF_EXISTS:
            yield from _walk(argument[1])
            if argument[2] is not None:
                yield from _walk(argument[2])


def measure(pattern: str) -> PatternShape:
    """Checks that a regex is bounded, matches no empty text and uses no anchors (a pattern is searched
    anywhere, and a stream's text has no fixed start), and measures it. Raises ValueError saying what is wrong.

    ``re._parser`` is CPython's own regex parser (private, stable since 3.11 as sre_parse was before): nothing
    public measures a regex's width."""
    from re import _constants as sre
    from re import _parser

    try:
        parsed = _parser.parse(pattern)
    except re.error as error:
        raise ValueError(f"not a valid regex: {error}") from None
    low, high = parsed.getwidth()
    if low == 0:
        raise ValueError("the regex can match an empty text")
    if high >= _UNBOUNDED:
        raise ValueError("the regex must bound its length: use {m,n} instead of +, * or {m,}")
    lookbehind, boundary, backreference = 0, False, False
    for op, argument in _walk(parsed):
        backreference = backreference or op in (sre.GROUPREF, sre.GROUPREF_EXISTS)
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            width = _parser.SubPattern(parsed.state, argument[1]).getwidth()[1]
            if width >= _UNBOUNDED:
                raise ValueError("a lookaround must bound its length")
            if argument[0] == -1:
                lookbehind = max(lookbehind, width)
        elif op is sre.AT and argument in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
            boundary = True
        elif op is sre.AT:
            raise ValueError("anchors (^, $, \\A, \\Z) are not supported: patterns are searched anywhere")
    return PatternShape(max_width=high, max_lookbehind=lookbehind, word_boundary=boundary,
                        backreference=backreference)


def scoped(pattern: str) -> str:
    """The pattern as a group that can stand beside others in an alternation: leading global flags, ``(?i)``,
    become the group's own, ``(?i:...)``."""
    flags = re.match(r"\(\?([aiLmsux]+)\)", pattern)
    if flags:
        return f"(?{flags[1]}:{pattern[flags.end():]})"
    return f"(?:{pattern})"


# Boundaries are lookarounds rather than \b: a lookahead at the end of the text seen so far is reported as a
# possible partial match, a \b there is not (see EntityDetector.is_live).
_NUM_L = r"(?<![\w.+-])"
_NUM_R = r"(?![\w-]|[.,]\d)"
_PEM_SEP = r"(?:\r?\n[ \t]{0,16}|\\n|[ \t]{1,16})"  # a line break (indented in YAML), a JSON "\n", spaces
_PEM_LABEL = r"(?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----"


@cache
def builtin_patterns() -> tuple[EntityPattern, ...]:
    """The built-in patterns, in overlap-resolution order (compiled on first use: 45 ms, not at import)."""
    return (
        EntityPattern(
            "private_key", "private_key", "secret",
            r"-----BEGIN " + _PEM_LABEL + _PEM_SEP + r"?"
            r"(?:(?:Proc-Type|DEK-Info):[^\r\n\\]{1,100}" + _PEM_SEP + r"){0,2}" + _PEM_SEP + r"?"
            r"(?:[A-Za-z0-9+/=]{1,100}" + _PEM_SEP + r"){0,200}"
            r"(?:-----END " + _PEM_LABEL + r"|[A-Za-z0-9+/=]{1,100})?"),
        EntityPattern("aws_access_key_id", "api_key", "secret",
                      r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])", validator="require_digit"),
        EntityPattern("github_token", "api_key", "secret",
                      r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})(?![\w-])",
                      validator="vendor_key"),
        EntityPattern("openai_style_key", "api_key", "secret", r"(?<![\w-])sk-[A-Za-z0-9_-]{20,250}(?![\w-])",
                      validator="vendor_key"),
        EntityPattern("stripe_key", "api_key", "secret",
                      r"(?<![\w-])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,250}(?![\w-])", validator="vendor_key"),
        EntityPattern("slack_token", "api_key", "secret", r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,250}(?![\w-])",
                      validator="vendor_key"),
        EntityPattern("google_api_key", "api_key", "secret", r"(?<![\w-])AIza[A-Za-z0-9_-]{35}(?![\w-])",
                      validator="vendor_key"),
        EntityPattern("jwt", "api_key", "secret",
                      r"(?<![\w-])eyJ[A-Za-z0-9_-]{10,2000}\.eyJ[A-Za-z0-9_-]{2,4000}\.[A-Za-z0-9_-]{10,1000}(?![\w-])"),
        # Starts at the keyword (a name prefix such as DB_ adds nothing to mask, and a lazy prefix made the scan
        # ten times slower); only the value is masked.
        EntityPattern(
            "secret_assignment", "secret", "secret",
            r"(?i:api[_-]?key|secret|token|passw(?:or)?d|pwd|passphrase|credentials?)[A-Za-z0-9_]{0,20}[\"']?\s{0,3}"
            r"(?::=|=>|[:=])\s{0,3}[\"']?(?P<secret>[^\s\"'`,;()\[\]{}<>]{6,200})(?![^\s\"'`,;()\[\]{}<>])",
            validator="secret_value", secret_group="secret"),
        EntityPattern(
            "email", "email", "pii",
            r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
            r"[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])",
            validator="email"),
        EntityPattern("credit_card", "credit_card", "pii", _NUM_L + r"\d(?:[ -]?\d){12,18}" + _NUM_R,
                      validator="credit_card"),
        EntityPattern("iban", "iban", "pii", r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])",
                      validator="iban"),
        EntityPattern("us_ssn", "us_ssn", "pii", _NUM_L + r"\d{3}(?:-\d{2}-| \d{2} )\d{4}" + _NUM_R,
                      validator="us_ssn"),
        EntityPattern("us_ssn_bare", "us_ssn", "pii", _NUM_L + r"\d{9}" + _NUM_R, validator="us_ssn",
                      context_words=("ssn", "social security", "ss#", "ssn#", "social-security")),
        EntityPattern("phone_international", "phone", "pii",
                      r"(?<![\w+])\+[1-9]\d{0,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}" + _NUM_R,
                      validator="phone_international"),
        EntityPattern("phone_nanp", "phone", "pii",
                      # The first character before the lookbehind lets the scan skip to digits and parentheses (7x).
                      r"(?:1(?<![\w.+-]1)[ .-](?=[(2-9])|[(2-9](?<![\w.+-].))"
                      r"(?:(?<=\()[2-9]\d{2}\) ?|(?<=[2-9])\d{2}[ .-]|(?<=[ .-])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-]))"
                      r"[2-9]\d{2}[ .-]\d{4}" + _NUM_R),
        EntityPattern("phone_national", "phone", "pii", _NUM_L + r"0\d{1,4}(?:[ .-]?\d{2,4}){2,4}" + _NUM_R,
                      validator="phone_national",
                      context_words=("phone", "tel", "tel.", "telephone", "mobile", "cell", "call", "fax", "whatsapp",
                                     "ring", "text me", "number", "contact")),
        EntityPattern("ipv4", "ip_address", "pii",
                      r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                      r"(?:/(?:3[0-2]|[12]?\d))?(?![\w]|\.\d)",
                      validator="ipv4", deny_context_words=("version", "ver", "release", "build", "oid", "section", "chapter",
                                                               "clause", "figure", "table", "step", "rfc", "§"),
                      context_chars=16),
        EntityPattern("ipv6", "ip_address", "pii",
                      r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){1,7}(?:\.\d{1,3}){0,3}"
                      r"(?:/\d{1,3})?(?![\w:]|\.\d)",
                      validator="ipv6"),
    )
