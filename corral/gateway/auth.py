"""Who is calling (docs/gateway.md#tenants-and-api-keys): an ``Authorization: Bearer ck-...`` key, looked up in
the key store on every request (so a revocation, from any process, holds from the next request on), names a
tenant of the config; the tenant decides which model groups the request may reach. The admin API and
``/gateway/status`` take the admin key instead."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from corral.gateway.config import AuthConfig
from corral.gateway.errors import GatewayError
from corral.gateway.key_store import KeyStore
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.tenants import TenantConfig

_BEARER = "bearer "


@dataclass(frozen=True)
class Tenant:
    """The caller of an authorized request: its tenant and the key it used."""

    name: str
    config: TenantConfig
    key_id: str


class Authenticator:
    """Checks API keys against ``store`` and the admin key (None: the admin API is refused)."""

    def __init__(self, config: AuthConfig, store: KeyStore, admin_key: str | None, metrics: GatewayMetrics):
        self.config, self.store, self.admin_key, self.metrics = config, store, admin_key, metrics

    def tenant(self, headers: Mapping[str, str]) -> Tenant:
        """The request's tenant, or a 401 saying what is wrong with its key."""
        key = bearer(headers)
        if key is None:
            raise self._refuse("missing_key", "no API key: send it as `Authorization: Bearer <key>`")
        if not key.startswith("ck-"):
            raise self._refuse("malformed_key", "the API key is malformed (a corral key starts with `ck-`)")
        record = self.store.verify(key)
        if record is None:
            raise self._refuse("unknown_key", "the API key is not valid")
        if record.revoked:
            raise self._refuse("revoked_key", f"the API key {record.key_id} has been revoked")
        config = self.config.tenants.get(record.tenant)
        if config is None:  # its tenant was removed from the config since the key was created
            raise self._refuse("unknown_tenant", f"the API key's tenant {record.tenant!r} is not configured")
        return Tenant(record.tenant, config, record.key_id)

    def check_group(self, tenant: Tenant, group: str) -> None:
        if not tenant.config.allows(group):
            self.metrics.auth_failures.labels(reason="model_not_allowed").inc()
            raise GatewayError(403, f"tenant {tenant.name!r} may not use model {group!r}", param="model",
                               code="model_not_allowed")

    def check_admin(self, headers: Mapping[str, str]) -> None:
        """A 403 while no admin key is configured, a 401 for a missing or wrong one."""
        if self.admin_key is None:
            raise GatewayError(403, f"the admin API is off: set {self.config.admin_key_env} in the gateway's "
                                    f"environment", code="admin_api_disabled")
        key = bearer(headers)
        if key is None or not hmac.compare_digest(key.encode(), self.admin_key.encode()):
            raise self._refuse("admin_key", "this route needs the admin key as `Authorization: Bearer <key>`")

    def _refuse(self, reason: str, message: str) -> GatewayError:
        self.metrics.auth_failures.labels(reason=reason).inc()
        return GatewayError(401, message, code="invalid_api_key")


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None or not value[:len(_BEARER)].lower() == _BEARER:
        return None
    return value[len(_BEARER):].strip() or None
