"""Guardrails: PII and secrets masking (also on a stream), prompt injection heuristics, system prompt leakage
and structured output checks, driven by a per-tenant policy (docs/guardrails.md)."""

from corral.gateway.guardrails.pipeline import Guardrails, InputResult, OutputResult
from corral.gateway.guardrails.policy import GuardrailConfigError, GuardrailPolicy, parse_policy
from corral.gateway.guardrails.verdict import CheckResult, ContentPolicyError, Span, Verdict

__all__ = ["CheckResult", "ContentPolicyError", "GuardrailConfigError", "GuardrailPolicy", "Guardrails",
           "InputResult", "OutputResult", "Span", "Verdict", "parse_policy"]
