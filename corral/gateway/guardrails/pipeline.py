"""Runs a policy's checks on a request's messages, on an answer, or on an answer streamed in chunks.

Checks run in policy order; a mask hands the masked text to the next check, a deny stops there. Input checks
are the entity checks with ``input`` in their stages and the injection check; output checks are the entity
checks with ``output``, leakage and json_output. The wiring into the request path (not here) raises
``ContentPolicyError`` for a denied verdict (``Verdict.raise_if_denied``) and counts ``action_counts``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from corral.gateway.guardrails.arguments import ArgumentsStream
from corral.gateway.guardrails.injection import InjectionDetector, default_rules, load_rules
from corral.gateway.guardrails.json_output import check_json_output
from corral.gateway.guardrails.leakage import SystemPromptIndex, find_leaks, mask_leaks
from corral.gateway.guardrails.output_stream import OutputStream, entity_result, leak_result
from corral.gateway.guardrails.pii import EntityDetector, apply_masks
from corral.gateway.guardrails.policy import (
    CheckConfig,
    GuardrailPolicy,
    InjectionCheck,
    JsonOutputCheck,
    LeakageCheck,
    PiiCheck,
    SecretsCheck,
    check_name,
)
from corral.gateway.guardrails.validators import load_callable
from corral.gateway.guardrails.verdict import CheckResult, Span, Verdict


@dataclass(frozen=True)
class InputResult:
    """The messages to forward (masked where a check masked) and the verdict."""

    messages: list[dict[str, Any]]
    verdict: Verdict


@dataclass(frozen=True)
class OutputResult:
    text: str
    verdict: Verdict


class Guardrails:
    """A policy, compiled once (patterns, rules, classifier) and used for every request it applies to.

    ``more``: policies whose checks run after the policy's own, each as ``(label, policy)`` (a model group's
    policy after its tenant's: docs/guardrails.md#per-group-policies). Their checks are named ``<label>.<name>``
    in verdicts and metrics, and each check finds the entities of its own policy's patterns."""

    def __init__(self, policy: GuardrailPolicy, *more: tuple[str, GuardrailPolicy]):
        self.policy = policy
        self.checks: list[CheckConfig] = []
        self._detectors: dict[str, EntityDetector] = {}
        self._injection: dict[str, InjectionDetector] = {}
        for label, layer in ((None, policy), *more):
            for check in layer.checks:
                if label is not None:  # the name pattern has no ".": never the name of a check of the policy
                    check = check.model_copy(update={"name": f"{label}.{check_name(check)}"})
                self.checks.append(check)
                if isinstance(check, PiiCheck | SecretsCheck):
                    self._detectors[check_name(check)] = EntityDetector(layer.entity_patterns(check))
                elif isinstance(check, InjectionCheck):
                    self._injection[check_name(check)] = _injection_detector(check)

    def check_input(self, messages: list[dict[str, Any]]) -> InputResult:
        """Chat messages (``content`` a string or a list of parts; text parts are checked)."""
        messages = [dict(message) for message in messages]
        results: list[CheckResult] = []
        for check in self.checks:
            if isinstance(check, PiiCheck | SecretsCheck) and "input" in check.stages:
                result = self._entities_in_messages(check, messages)
            elif isinstance(check, InjectionCheck):
                result = self._injection_in_messages(check, messages)
            else:
                continue
            results.append(result)
            if result.action == "deny":
                break
        return InputResult(messages, Verdict(tuple(results)))

    def check_output(self, text: str, system_prompt: str | None = None,
                     response_format: dict[str, Any] | None = None) -> OutputResult:
        """A whole answer (not streamed)."""
        results: list[CheckResult] = []
        for check in self._output_checks(system_prompt):
            text, result = self._output_check(check, text, system_prompt, response_format)
            results.append(result)
            if result.action == "deny":
                break
        return OutputResult(text, Verdict(tuple(results)))

    def output_stream(self, system_prompt: str | None = None,
                      response_format: dict[str, Any] | None = None) -> OutputStream:
        """A stream masker for one streamed answer (output_stream.py)."""
        checks = self._output_checks(system_prompt)
        return OutputStream(checks, self._detectors, system_prompt, response_format)

    def arguments_stream(self, system_prompt: str | None = None) -> ArgumentsStream:
        """The output checks of one tool call's arguments, streamed (arguments.py); json_output does not apply."""
        return ArgumentsStream(self._output_checks(system_prompt), self._detectors, system_prompt)

    def check_arguments(self, arguments: str, system_prompt: str | None = None) -> OutputResult:
        """A tool call's whole arguments (JSON text): masked so that the JSON stays valid."""
        stream = self.arguments_stream(system_prompt)
        text = stream.feed(arguments) + stream.finish()
        return OutputResult(text, stream.verdict)

    def _output_checks(self, system_prompt: str | None) -> list[CheckConfig]:
        return [check for check in self.checks
                if (isinstance(check, PiiCheck | SecretsCheck) and "output" in check.stages)
                or (isinstance(check, LeakageCheck) and system_prompt) or isinstance(check, JsonOutputCheck)]

    def _output_check(self, check: CheckConfig, text: str, system_prompt: str | None,
                      response_format: dict[str, Any] | None) -> tuple[str, CheckResult]:
        if isinstance(check, PiiCheck | SecretsCheck):
            detector = self._detectors[check_name(check)]
            findings = detector.find(text)
            result = entity_result(check, findings)
            if result.action == "mask":
                text = apply_masks(text, findings, detector.labels, 0, len(text))
            return text, result
        if isinstance(check, LeakageCheck):
            leaks = find_leaks(text, SystemPromptIndex(system_prompt or "", check.min_words))
            result = leak_result(check, leaks)
            return (mask_leaks(text, leaks) if result.action == "mask" else text), result
        verdict = check_json_output(text, response_format)
        hit = verdict.applicable and not verdict.valid
        return text, CheckResult(check_name(check), "json_output", hit, check.action if hit else None,
                                 {"invalid_json": 1} if hit else {}, detail=verdict.error)

    def _entities_in_messages(self, check: PiiCheck | SecretsCheck, messages: list[dict[str, Any]]) -> CheckResult:
        detector = self._detectors[check_name(check)]
        spans: list[Span] = []
        for index, message in enumerate(messages):
            if message.get("role") not in check.roles:
                continue
            texts = _texts(message)
            for part, text in texts:
                findings = detector.find(text)
                spans += [Span(f.kind, f.start, f.end, index, part) for f in findings]
                if findings and check.action == "mask":
                    _set_text(message, part, apply_masks(text, findings, detector.labels, 0, len(text)))
        hit = bool(spans)
        return CheckResult(check_name(check), check.type, hit, check.action if hit else None,
                           dict(Counter(span.kind for span in spans)), tuple(spans))

    def _injection_in_messages(self, check: InjectionCheck, messages: list[dict[str, Any]]) -> CheckResult:
        detector = self._injection[check_name(check)]
        spans: list[Span] = []
        rules: Counter[str] = Counter()
        top_score = 0.0
        for index, message in enumerate(messages):
            if message.get("role") not in check.roles:
                continue
            for part, text in _texts(message):
                scored = detector.scan(text)
                top_score = max(top_score, scored.score, scored.classifier_score or 0.0)
                if scored.hit:
                    spans.append(Span("injection", 0, len(text), index, part))
                    rules.update(scored.rules or ("classifier",))
        hit = bool(spans)
        return CheckResult(check_name(check), "injection", hit, check.action if hit else None, dict(rules),
                           tuple(spans), score=top_score)


def _injection_detector(check: InjectionCheck) -> InjectionDetector:
    rules = list(default_rules())
    for path in check.rules_files:
        rules += load_rules(path)
    rules = [rule for rule in rules if rule.name not in set(check.disabled_rules)]
    classifier = load_callable(check.classifier) if check.classifier else None
    return InjectionDetector(rules, check.threshold, classifier, check.classifier_threshold)


def _texts(message: dict[str, Any]) -> list[tuple[int | None, str]]:
    """(part index or None for a string content, text) of a chat message's text."""
    content = message.get("content")
    if isinstance(content, str):
        return [(None, content)]
    if isinstance(content, list):
        return [(index, part["text"]) for index, part in enumerate(content)
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)]
    return []


def _set_text(message: dict[str, Any], part: int | None, text: str) -> None:
    if part is None:
        message["content"] = text
    else:
        content = list(message["content"])
        content[part] = {**content[part], "text": text}
        message["content"] = content
