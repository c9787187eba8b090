"""The output checks of one streamed answer, chained: each delta goes through every check in policy order and
what comes out of the last one may be sent. A check that masks or denies holds back what it must (its own
stream masker); one that only flags or allows lets text through and looks at the whole answer at the end.

A json_output check with action ``deny`` holds the whole answer until it is complete (invalid JSON must not
reach the client); with ``flag`` the answer streams and the verdict comes at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from corral.gateway.guardrails.json_output import asks_for_json, check_json_output
from corral.gateway.guardrails.leakage import LeakSpan, LeakStreamMasker, SystemPromptIndex, find_leaks
from corral.gateway.guardrails.pii import EntityDetector, Finding
from corral.gateway.guardrails.policy import (
    CheckConfig,
    JsonOutputCheck,
    LeakageCheck,
    PiiCheck,
    SecretsCheck,
    check_name,
)
from corral.gateway.guardrails.stream_mask import StreamMasker
from corral.gateway.guardrails.verdict import CheckResult, Span, Verdict


def entity_result(check: PiiCheck | SecretsCheck, findings: list[Finding]) -> CheckResult:
    hit = bool(findings)
    return CheckResult(check_name(check), check.type, hit, check.action if hit else None,
                       dict(Counter(f.kind for f in findings)), tuple(Span(f.kind, f.start, f.end) for f in findings))


def leak_result(check: LeakageCheck, leaks: list[LeakSpan]) -> CheckResult:
    hit = bool(leaks)
    return CheckResult(check_name(check), "leakage", hit, check.action if hit else None,
                       {"system_prompt": len(leaks)} if hit else {},
                       tuple(Span("system_prompt", leak.start, leak.end) for leak in leaks))


class _MaskingStage:
    """A check that masks or denies through its stream masker; one that only flags or allows lets the text
    through and looks at the whole answer at the end (``_find_in``)."""

    def __init__(self, check: PiiCheck | SecretsCheck | LeakageCheck, new_masker: Callable[[], Any]):
        self.check = check
        self.denied = False
        self._masker = new_masker() if check.action in ("mask", "deny") else None
        self._seen: list[str] = []
        self._found: list[Any] = []  # the whole answer's findings, for a check without a masker

    def feed(self, text: str) -> str:
        if self._masker is None:
            self._seen.append(text)
            return text
        return self._checked(self._masker.feed(text))

    def flush(self) -> str:
        if self._masker is None:
            self._found = self._find_in("".join(self._seen))
            return ""
        return self._checked(self._masker.flush())

    def _checked(self, output: str) -> str:
        # Before its first hit a deny check's masker emits the text unchanged; after it, nothing goes out.
        if self.check.action == "deny" and self._masker_hit():
            self.denied = True
            return ""
        return output

    def _find_in(self, text: str) -> list[Any]:
        raise NotImplementedError

    def _masker_hit(self) -> bool:
        raise NotImplementedError


class _EntityStage(_MaskingStage):
    def __init__(self, check: PiiCheck | SecretsCheck, detector: EntityDetector):
        super().__init__(check, lambda: StreamMasker(detector))
        self.detector = detector

    def _find_in(self, text: str) -> list[Finding]:
        return self.detector.find(text)

    def _masker_hit(self) -> bool:
        return bool(self._masker.findings)

    def result(self) -> CheckResult:
        return entity_result(self.check, self._masker.findings if self._masker else self._found)


class _LeakStage(_MaskingStage):
    def __init__(self, check: LeakageCheck, system_prompt: str):
        self.index = SystemPromptIndex(system_prompt, check.min_words)
        super().__init__(check, lambda: LeakStreamMasker(self.index))

    def _find_in(self, text: str) -> list[LeakSpan]:
        return find_leaks(text, self.index)

    def _masker_hit(self) -> bool:
        return bool(self._masker.leaked)

    def result(self) -> CheckResult:
        if self._masker is not None and self.check.action == "deny" and self._masker.leaked:
            return CheckResult(check_name(self.check), "leakage", True, "deny", {"system_prompt": 1})
        return leak_result(self.check, self._masker.leaks if self._masker else self._found)


class _JsonStage:
    def __init__(self, check: JsonOutputCheck, response_format: dict[str, Any] | None):
        self.check, self.response_format = check, response_format
        self.denied = False
        # Only an answer the request asked to be JSON is held back (a deny must not let invalid JSON out).
        self._holds = check.action == "deny" and asks_for_json(response_format)
        self._seen: list[str] = []
        self._result = CheckResult(check_name(check), "json_output", False, None)

    def feed(self, text: str) -> str:
        self._seen.append(text)
        return "" if self._holds else text

    def flush(self) -> str:
        text = "".join(self._seen)
        verdict = check_json_output(text, self.response_format)
        hit = verdict.applicable and not verdict.valid
        self._result = CheckResult(check_name(self.check), "json_output", hit, self.check.action if hit else None,
                                   {"invalid_json": 1} if hit else {}, detail=verdict.error)
        self.denied = hit and self.check.action == "deny"
        return "" if self.denied or not self._holds else text

    def result(self) -> CheckResult:
        return self._result


class StagedChecks:
    """A stream's checks, run as stages in the policy's order: denied once one denies; the verdict is their
    results up to the first that denied."""

    _stages: list[Any]

    @property
    def denied(self) -> bool:
        return any(stage.denied for stage in self._stages)

    @property
    def verdict(self) -> Verdict:
        results = []
        for stage in self._stages:
            results.append(stage.result())
            if stage.denied:
                break
        return Verdict(tuple(results))


class OutputStream(StagedChecks):
    """``feed`` each delta and send what it returns; ``finish`` at the end of the stream and send what it
    returns. Once ``denied`` (a deny check hit), nothing more comes out: end the stream with an error event
    (``ContentPolicyError(stream.verdict)``). ``verdict`` holds the results of the checks so far."""

    def __init__(self, checks: list[CheckConfig], detectors: dict[str, EntityDetector], system_prompt: str | None,
                 response_format: dict[str, Any] | None):
        self._stages: list[_EntityStage | _LeakStage | _JsonStage] = []
        for check in checks:
            if isinstance(check, PiiCheck | SecretsCheck):
                self._stages.append(_EntityStage(check, detectors[check_name(check)]))
            elif isinstance(check, LeakageCheck):
                self._stages.append(_LeakStage(check, system_prompt or ""))
            else:
                self._stages.append(_JsonStage(check, response_format))
        self.finished = False

    def feed(self, delta: str) -> str:
        if self.denied or self.finished:
            return ""
        text = delta
        for stage in self._stages:
            if not text:
                return ""
            text = stage.feed(text)
            if stage.denied:
                return ""
        return text

    def finish(self) -> str:
        if self.denied or self.finished:
            return ""
        self.finished = True
        carry = ""
        for stage in self._stages:
            carry = (stage.feed(carry) if carry else "") + stage.flush()
            if stage.denied:
                return ""
        return carry
