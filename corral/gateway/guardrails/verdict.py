"""What the guardrails decided: one ``CheckResult`` per check that ran, in policy order, gathered in a
``Verdict``. Results hold offsets, kinds and counts, never the matched text, so they can go to the audit
record as they are; ``Verdict.action_counts`` gives the ``(check, action)`` pairs that the metric
``corral_gateway_guardrail_actions_total{check, action}`` counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from corral.gateway.errors import GatewayError

Action = Literal["allow", "flag", "mask", "deny"]
CheckType = Literal["pii", "secrets", "injection", "leakage", "json_output"]


@dataclass(frozen=True)
class Span:
    """``[start, end)`` in a text: of message ``message`` (its index in the request's messages; ``part``: the
    index of the text part when its content is a list) for an input check, of the answer for an output check
    (both None). ``kind``: the entity kind; ``system_prompt`` for a leak, ``injection`` for a message."""

    kind: str
    start: int
    end: int
    message: int | None = None
    part: int | None = None


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome. ``action`` is what was done: the check's configured action when it hit, None when
    it did not. ``kinds`` counts what was found: entity kinds, or the injection rules that matched."""

    check: str
    type: CheckType
    hit: bool
    action: Action | None
    kinds: dict[str, int] = field(default_factory=dict)
    spans: tuple[Span, ...] = ()
    score: float | None = None
    detail: str | None = None

    def to_record(self) -> dict:
        record = asdict(self)
        record["spans"] = [asdict(span) for span in self.spans]
        return record


@dataclass(frozen=True)
class Verdict:
    """The results of the checks that ran, in order (checks after a denial do not run)."""

    results: tuple[CheckResult, ...] = ()

    @property
    def denial(self) -> CheckResult | None:
        return next((result for result in self.results if result.action == "deny"), None)

    @property
    def denied(self) -> bool:
        return self.denial is not None

    @property
    def flagged(self) -> bool:
        return any(result.action == "flag" for result in self.results)

    @property
    def masked(self) -> bool:
        return any(result.action == "mask" for result in self.results)

    def action_counts(self) -> list[tuple[str, str]]:
        """``(check, action)`` for each check that acted, the labels of the guardrail actions metric."""
        return [(result.check, result.action) for result in self.results if result.action is not None]

    def to_record(self) -> list[dict]:
        return [result.to_record() for result in self.results]

    def raise_if_denied(self) -> None:
        if self.denied:
            raise ContentPolicyError(self)

    def __add__(self, other: Verdict) -> Verdict:
        return Verdict(self.results + other.results)


class ContentPolicyError(GatewayError):
    """A guardrail denied the request or its answer: a 400 with ``code: "content_policy"`` (as OpenAI answers a
    content policy refusal); the message names the check, never what it found."""

    def __init__(self, verdict: Verdict):
        denial = verdict.denial
        assert denial is not None, "ContentPolicyError needs a verdict with a denial"
        super().__init__(400, f"refused by the gateway's content policy (check {denial.check!r})",
                         code="content_policy")
        self.verdict = verdict
