"""Prompt injection and jailbreak heuristics: a maintained rule set (injection_rules.yaml) of named, weighted
phrase patterns over normalised text (normalize.py), plus an optional classifier a user plugs in.

The score of a text is the sum of the weights of the rules it matches, each once. Base64 runs in the text are
decoded and scanned too (an encoded order is still an order). A classifier, when configured, is a callable
``text -> float`` in [0, 1] (``module:function`` in the config); the check hits when the rule score reaches
its threshold or the classifier's score reaches its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.gateway.guardrails.normalize import fold, normalize

RULES_PATH = Path(__file__).with_name("injection_rules.yaml")
# Rules and this scan use re, not the regex module: on these patterns it is 2 to 6 times faster.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_MAX_DECODED_RUNS = 8


class _RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    weight: float = Field(gt=0)
    description: str
    patterns: list[str | list[str]] = []
    raw_patterns: list[str | list[str]] = []

    @field_validator("patterns", "raw_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str | list[str]]) -> list[str | list[str]]:
        for pattern in patterns:
            joined = "".join(pattern) if isinstance(pattern, list) else pattern
            try:
                re.compile(joined)
            except re.error as error:
                raise ValueError(f"{joined[:60]!r}...: not a valid regex: {error}") from None
        return patterns


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1, le=1)
    rules: list[_RuleConfig] = Field(min_length=1)


@dataclass(frozen=True)
class InjectionRule:
    """A named signal: ``patterns`` read the normalised text, ``raw_patterns`` the case-folded text. Each
    normalised pattern carries the word prefixes a match can start with (``trigger_words``; None: unknown)."""

    name: str
    weight: float
    description: str
    patterns: tuple[tuple[re.Pattern, frozenset[str] | None], ...]
    raw_patterns: tuple[re.Pattern, ...]


def trigger_words(pattern: str) -> frozenset[str] | None:
    """Prefixes (up to 8 letters) one of which a word of any matching text starts with: the leading letters
    of the pattern, or of each phrase of a leading group (``\\b(?:ignore|set aside|rules?)`` gives "ignore",
    "set", "rule"), for every top-level alternative; None when some alternative starts otherwise."""
    triggers: set[str] = set()
    for alternative in _split_top_level(pattern):
        body = alternative.removeprefix("\\b")
        if body.startswith("(?:"):
            close = _closing_paren(body)
            if body[close + 1:close + 2] in ("?", "*", "{"):
                return None
            starts = _split_top_level(body[3:close])
        else:
            starts = [body]
        for start in starts:
            prefix = _leading_letters(start)
            if not prefix:
                return None
            triggers.add(prefix)
    return frozenset(triggers)


_PREFIX_LETTERS = 8
_LEADING = re.compile(r"[a-z0-9]+")


def _leading_letters(text: str) -> str:
    match = _LEADING.match(text)
    if match is None:
        return ""
    letters = match[0]
    if text[len(letters):len(letters) + 1] in ("?", "*", "{"):  # the last letter is optional
        letters = letters[:-1]
    return letters[:_PREFIX_LETTERS]


def _split_top_level(pattern: str) -> list[str]:
    parts, depth, start, index = [], 0, 0, 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":  # a character class: skip to its end
            index = pattern.index("]", index + 2)
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:index])
            start = index + 1
        index += 1
    parts.append(pattern[start:])
    return parts


def _closing_paren(text: str) -> int:
    depth = 0
    for index, char in enumerate(text):
        if char == "(" and (index == 0 or text[index - 1] != "\\"):
            depth += 1
        elif char == ")" and text[index - 1] != "\\":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced parentheses in {text!r}")


def load_rules(path: str | Path = RULES_PATH) -> tuple[InjectionRule, ...]:
    """Reads a rules file (the format of injection_rules.yaml); raises ValueError naming the bad key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        parsed = _RulesFile.model_validate(data)
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{path}: {where}: {message.removeprefix('Value error, ')}") from None
    names = [rule.name for rule in parsed.rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: rules.name: duplicated: {', '.join(duplicates)}")
    return tuple(InjectionRule(rule.name, rule.weight, rule.description,
                               tuple((re.compile(p), trigger_words(p)) for p in _joined(rule.patterns)),
                               tuple(re.compile(p) for p in _joined(rule.raw_patterns))) for rule in parsed.rules)


def _joined(patterns: list[str | list[str]]) -> list[str]:
    return ["".join(p) if isinstance(p, list) else p for p in patterns]


@cache
def default_rules() -> tuple[InjectionRule, ...]:
    return load_rules(RULES_PATH)


@dataclass(frozen=True)
class InjectionScore:
    """The rules a text matched, their summed weight, the classifier's score (None: no classifier) and
    whether that is a hit."""

    score: float
    rules: tuple[str, ...]
    classifier_score: float | None
    hit: bool


class InjectionDetector:
    """Scores texts against a rule set; ``threshold`` on the summed weights, ``classifier_threshold`` on the
    optional classifier's score.

    A pattern whose first words are known is tried only where a word of the text starts with one of them
    (``match`` at that word), not searched through the whole text: a search tries every alternative of its
    first group at every position, about 100 us per kB and pattern, and most texts hold few trigger words."""

    def __init__(self, rules: Sequence[InjectionRule] | None = None, threshold: float = 1.0,
                 classifier: Callable[[str], float] | None = None, classifier_threshold: float = 0.5):
        self.rules = tuple(default_rules() if rules is None else rules)
        self.threshold = threshold
        self.classifier = classifier
        self.classifier_threshold = classifier_threshold
        self._by_trigger: dict[str, list[tuple[int, re.Pattern]]] = defaultdict(list)
        self._searched: list[tuple[int, re.Pattern]] = []
        for index, rule in enumerate(self.rules):
            for pattern, triggers in rule.patterns:
                if triggers is None:
                    self._searched.append((index, pattern))
                for trigger in triggers or ():
                    self._by_trigger[trigger].append((index, pattern))

    def scan(self, text: str) -> InjectionScore:
        scanned = text + "".join("\n" + decoded for decoded in _decoded_base64_runs(text))
        readings = tuple(dict.fromkeys(normalize(scanned)))  # usually the two readings are one
        folded = fold(scanned)
        matched: set[int] = set()
        for reading in readings:
            self._match_triggered(reading, matched)
            matched.update(index for index, pattern in self._searched
                           if index not in matched and pattern.search(reading))
        matched.update(index for index, rule in enumerate(self.rules)
                       if index not in matched and any(p.search(folded) for p in rule.raw_patterns))
        names = tuple(rule.name for index, rule in enumerate(self.rules) if index in matched)
        score = round(sum(self.rules[index].weight for index in matched), 6)
        classifier_score = None
        if self.classifier is not None:
            classifier_score = float(self.classifier(text))
            if not 0.0 <= classifier_score <= 1.0:
                raise ValueError(f"the injection classifier returned {classifier_score}, not a score in [0, 1]")
        hit = score >= self.threshold or (classifier_score is not None and classifier_score >= self.classifier_threshold)
        return InjectionScore(score, names, classifier_score, hit)

    def _match_triggered(self, reading: str, matched: set[int]) -> None:
        starts: dict[str, list[int]] = defaultdict(list)
        position = 0
        for word in reading.split(" "):
            starts[word].append(position)
            position += len(word) + 1
        for word, positions in starts.items():
            for length in range(1, min(len(word), _PREFIX_LETTERS) + 1):
                for index, pattern in self._by_trigger.get(word[:length], ()):
                    if index not in matched and any(pattern.match(reading, start) for start in positions):
                        matched.add(index)


def _decoded_base64_runs(text: str) -> list[str]:
    decoded: list[str] = []
    for match in _BASE64_RUN.finditer(text):
        if len(decoded) == _MAX_DECODED_RUNS:
            break
        run = match[0]
        try:
            plain = base64.b64decode(run + "=" * (-len(run) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if plain and sum(char.isprintable() or char.isspace() for char in plain) >= 0.9 * len(plain):
            decoded.append(plain)
    return decoded
