"""Guardrails: PII and secrets masking (also on a stream), prompt injection heuristics, system prompt leakage
and structured output checks, driven by a per-tenant policy (docs/guardrails.md).

Nothing is imported here: the gateway's config imports ``policy`` alone, so that a gateway without guardrails
never compiles their patterns and rules (start-up time). ``pipeline.Guardrails`` runs a policy."""
