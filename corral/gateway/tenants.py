"""Tenants, as the gateway's config declares them: who may reach which model groups, within which limits.

Tenants live in the YAML (reviewed like code, reloaded as a whole); API keys live in the key store (auth.py),
each key naming its tenant. Limits are enforced by limits.py on the request path (ledger.py), budgets persisted
in SQLite or Redis (budgets.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.gateway.errors import GatewayError
from corral.gateway.guardrails.policy import GuardrailPolicy
from corral.gateway.guardrails.policy import describe as describe_policy_error


def validated_policy(value: Any) -> GuardrailPolicy | None:
    """A ``guardrails:`` section as a policy. Its problems are re-raised as one ValueError naming the key inside
    the policy, so that the config's error names the whole path (``auth.tenants.acme.guardrails: checks.0...``)."""
    if value is None or isinstance(value, GuardrailPolicy):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with `checks`, got {type(value).__name__}")
    try:
        return GuardrailPolicy.model_validate(value)
    except ValidationError as error:
        raise ValueError(describe_policy_error(error)) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantLimits(_Strict):
    """A tenant's rate limits and budgets; None means unlimited. Tokens count prompt + completion tokens, as
    the backend reports them (``usage``)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1, description="requests in flight at once")
    tokens_per_day: int | None = Field(default=None, ge=1, description="budget per UTC day, persisted")
    tokens_per_month: int | None = Field(default=None, ge=1, description="budget per UTC calendar month, persisted")


class TenantConfig(_Strict):
    """One tenant: ``groups`` it may use (``["*"]``: every group), its limits, a ``max_tokens`` cap (a larger
    request is clamped, as a group's cap), and ``local_only`` (its requests never reach a ``url`` backend that
    is not marked ``on_premises``), and ``record_texts``: whether its requests' audit records hold the prompt and
    output texts, not only their SHA-256 (None: the ``audit.record_texts`` default); ``guardrails``: its content
    policy (docs/guardrails.md#using-it-in-the-gateway), in place of the gateway-wide one (``checks: []``: none)."""

    groups: list[str] = Field(default_factory=lambda: ["*"])
    limits: TenantLimits = TenantLimits()
    max_tokens_cap: int | None = Field(default=None, ge=1)
    local_only: bool = False
    record_texts: bool | None = None
    guardrails: GuardrailPolicy | None = None
    # Its priority class, vLLM's convention: lower runs first. Sent as the request's `priority` to backends
    # that schedule by it (backend `priority:`), so under load its requests are admitted before others'.
    priority: int = 0

    _guardrails_valid = field_validator("guardrails", mode="before")(validated_policy)

    def allows(self, group: str) -> bool:
        return "*" in self.groups or group in self.groups


def request_priority(body: dict, tenant: TenantConfig | None) -> int | None:
    """The ``priority`` a request runs at (lower first), or None where neither tenant nor client sets one.

    A tenant's requests run at its class; its client may ask for a lower priority (a larger number), never a
    higher one. Without tenants the client's own field stands."""
    asked = body.get("priority")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)):
        raise GatewayError(400, f"priority must be an integer, got {asked!r}", param="priority")
    if tenant is None:
        return asked
    if asked is not None and asked < tenant.priority:
        raise GatewayError(400, f"priority {asked} is above this key's priority class {tenant.priority} "
                           "(lower runs first)", param="priority", code="priority_not_allowed")
    return tenant.priority if asked is None else asked
