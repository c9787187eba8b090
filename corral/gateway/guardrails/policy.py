"""A guardrail policy (per tenant or per group): an ordered list of checks, each with its action, and the
user's own entity patterns. Strict pydantic models: an unknown key is an error naming its path, and so is a
pattern that does not compile, a validator or classifier that cannot be imported, or an entity nobody defines.

.. code-block:: yaml

    checks:
      - {type: secrets, action: deny}
      - {type: pii, action: mask, entities: [email, phone, credit_card, employee_id]}
      - {type: injection, action: deny, threshold: 1.0}
      - {type: leakage, action: mask, min_words: 10}
      - {type: json_output, action: deny}
    patterns:
      - {name: employee_id, regex: "EMP-\\\\d{6}", context_words: [employee]}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.errors import CorralError
from corral.gateway.config_errors import describe as describe_error
from corral.gateway.guardrails.patterns import MAX_CONTEXT_CHARS, EntityPattern, builtin_patterns
from corral.gateway.guardrails.validators import load_callable
from corral.gateway.guardrails.verdict import Action

Stage = Literal["input", "output"]
_NAME = r"^[a-z][a-z0-9_]*$"
_CHECK_TYPES = ("pii", "secrets", "injection", "leakage", "json_output")


class GuardrailConfigError(CorralError):
    """A guardrail policy is invalid (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _EntityCheck(_Strict):
    """Finds entities (patterns.py) in input messages of the given roles and in the answer. ``entities``:
    kinds (``email``) or pattern names (``aws_access_key_id``), built-in or the policy's own; None: every
    entity of this check's category (``pii`` or ``secret``), the policy's own patterns of it included."""

    name: str | None = Field(default=None, pattern=_NAME)
    action: Action = "mask"
    entities: list[str] | None = Field(default=None, min_length=1)
    stages: list[Stage] = Field(default_factory=lambda: ["input", "output"], min_length=1)
    roles: list[str] = Field(default_factory=lambda: ["user", "assistant", "tool", "function"], min_length=1)


class PiiCheck(_EntityCheck):
    type: Literal["pii"]


class SecretsCheck(_EntityCheck):
    type: Literal["secrets"]


class InjectionCheck(_Strict):
    """Prompt injection heuristics (injection.py) on input messages of the given roles (tool results and
    retrieved documents arrive as ``tool``/``function`` messages). ``rules_files`` add rule files of the
    built-in format; ``classifier``: ``module:function`` taking a text, returning a score in [0, 1]."""

    type: Literal["injection"]
    name: str | None = Field(default=None, pattern=_NAME)
    action: Literal["allow", "flag", "deny"] = "deny"
    threshold: float = Field(default=1.0, gt=0)
    roles: list[str] = Field(default_factory=lambda: ["user", "tool", "function"], min_length=1)
    rules_files: list[str] = []
    disabled_rules: list[str] = []
    classifier: str | None = None
    classifier_threshold: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _rules_and_classifier_load(self) -> InjectionCheck:
        # Imported here: a gateway whose policies have no injection check never loads the rule set.
        from corral.gateway.guardrails.injection import default_rules, load_rules

        names = {rule.name for rule in default_rules()}
        for path in self.rules_files:
            names |= {rule.name for rule in load_rules(path)}
        for rule in self.disabled_rules:
            if rule not in names:
                raise ValueError(f"disabled_rules: no rule named {rule!r}")
        if self.classifier is not None:
            load_callable(self.classifier)
        return self


class LeakageCheck(_Strict):
    """System prompt leakage (leakage.py): ``min_words`` consecutive words of the system prompt in the answer."""

    type: Literal["leakage"]
    name: str | None = Field(default=None, pattern=_NAME)
    action: Action = "mask"
    min_words: int = Field(default=10, ge=3)


class JsonOutputCheck(_Strict):
    """The answer to a request with ``response_format`` json_object/json_schema is valid for it (json_output.py)."""

    type: Literal["json_output"]
    name: str | None = Field(default=None, pattern=_NAME)
    action: Literal["allow", "flag", "deny"] = "deny"


CheckConfig = Annotated[PiiCheck | SecretsCheck | InjectionCheck | LeakageCheck | JsonOutputCheck,
                        Field(discriminator="type")]


class CustomPatternConfig(_Strict):
    """A user's own entity: a bounded Python regex (``{m,n}``, not ``+`` or ``*``; no ``^``/``$``), an optional
    validator (a built-in one, validators.py, or ``module:function`` returning bool), and optional context
    words, one of which must occur in the ``context_chars`` characters before a match."""

    name: str = Field(pattern=_NAME)
    regex: str = Field(min_length=1)
    kind: str | None = Field(default=None, pattern=_NAME)
    category: Literal["pii", "secret"] = "pii"
    validator: str | None = None
    context_words: list[str] = []
    context_chars: int = Field(default=32, ge=1, le=MAX_CONTEXT_CHARS)

    @model_validator(mode="after")
    def _compiles(self) -> CustomPatternConfig:
        self.to_pattern()
        return self

    def to_pattern(self) -> EntityPattern:
        try:
            return EntityPattern(self.name, self.kind or self.name, self.category, self.regex, self.validator,
                                 tuple(self.context_words), (), self.context_chars)
        except ValueError as error:
            raise ValueError(f"regex {self.regex!r}: {error}") from None


class GuardrailPolicy(_Strict):
    """The checks, run in order (input checks on the request, output checks on the answer; a deny stops the
    rest), and the patterns the entity checks may name besides the built-in ones."""

    checks: list[CheckConfig] = []
    patterns: list[CustomPatternConfig] = []

    @model_validator(mode="after")
    def _names_resolve(self) -> GuardrailPolicy:
        builtin_names = {pattern.name for pattern in builtin_patterns()}
        for index, pattern in enumerate(self.patterns):
            if pattern.name in builtin_names:
                raise ValueError(f"patterns.{index}.name: {pattern.name!r} is a built-in pattern")
        names = [pattern.name for pattern in self.patterns]
        if len(set(names)) != len(names):
            raise ValueError("patterns: pattern names must be unique")
        known = builtin_names | {p.kind for p in builtin_patterns()} | set(names) | {p.kind or p.name for p in self.patterns}
        seen: set[str] = set()
        for index, check in enumerate(self.checks):
            name = check_name(check)
            if name in seen:
                raise ValueError(f"checks.{index}.name: two checks are named {name!r} (name one of them)")
            seen.add(name)
            for entity in getattr(check, "entities", None) or ():
                if entity not in known:
                    raise ValueError(f"checks.{index}.entities: no entity named {entity!r}")
        return self

    def entity_patterns(self, check: PiiCheck | SecretsCheck) -> tuple[EntityPattern, ...]:
        """The patterns an entity check looks for, built-in ones first (their order settles overlaps)."""
        everything = (*builtin_patterns(), *(pattern.to_pattern() for pattern in self.patterns))
        if check.entities is None:
            category = "pii" if check.type == "pii" else "secret"
            return tuple(pattern for pattern in everything if pattern.category == category)
        wanted = set(check.entities)
        return tuple(pattern for pattern in everything if pattern.name in wanted or pattern.kind in wanted)


def check_name(check: CheckConfig) -> str:
    """The check's label in verdicts and metrics: its ``name``, else its ``type``."""
    return check.name or check.type


def parse_policy(data: object, source: str = "guardrails") -> GuardrailPolicy:
    """Validates already-parsed data (a dict, as from YAML); raises GuardrailConfigError naming the key."""
    if not isinstance(data, dict):
        raise GuardrailConfigError(f"{source}: expected a mapping with `checks`, got {type(data).__name__}")
    try:
        return GuardrailPolicy.model_validate(data)
    except ValidationError as error:
        raise GuardrailConfigError(f"{source}: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """The first problem on one line, ``key.path: message``, without the checks' union tags in the path."""
    return describe_error(error, union_tags=_CHECK_TYPES)
