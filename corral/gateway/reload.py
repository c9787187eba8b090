"""What a config reload changes (docs/gateway.md#reloading-the-config), as a pure function of the old and the new
config: the changes of the reloadable keys, one per changed tenant part or policy, each with its state before
and after, or ``RestartRequired`` naming the first changed key that only a restart applies.

Reloadable: ``auth.tenants`` (tenants added, removed, and every field of one), the gateway-wide ``guardrails``,
each group's ``guardrails``, ``audit.record_texts`` and ``max_body_bytes``: values the request path reads afresh
for each request; and ``limits`` (the limits' store) while no tenant has had limits, so no store has been built.
Everything else is built into running parts at start (backends and their supervisors, the
listening socket, the cache, the key store, the limits' store, the audit writer) and takes a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from corral.gateway.config import GatewayConfig, GatewayConfigError

RELOADABLE = ("auth.tenants", "guardrails", "groups.<name>.guardrails", "audit.record_texts", "max_body_bytes")
_MISSING = object()


class RestartRequired(GatewayConfigError):
    """The new config changes a key a reload cannot apply; ``key`` is its path (``groups.chat.backends.0.url``)."""

    def __init__(self, key: str):
        super().__init__(f"{key} changed, and only a restart applies it (a reload applies "
                         f"{', '.join(RELOADABLE)})")
        self.key = key


@dataclass(frozen=True)
class Change:
    """One change a reload makes, as its admin audit record says it: ``action`` (tenant.create, tenant.delete,
    tenant.change, limits.change, policy.change, config.change), ``target`` (the key path), and ``before`` and
    ``after`` (the changed fields only, for a tenant's fields and limits; None where there was none)."""

    action: str
    target: str
    before: Any
    after: Any


def config_changes(old: GatewayConfig, new: GatewayConfig, limits_built: bool = True) -> list[Change]:
    """The changes from ``old`` to ``new``, in key order; RestartRequired when a key outside RELOADABLE changed.
    ``limits_built``: whether the limits' store is built (then ``limits`` takes a restart)."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    key = first_difference(_fixed(before, limits_built), _fixed(after, limits_built))
    if key is not None:
        raise RestartRequired(key)
    changes: list[Change] = []
    if before["limits"] != after["limits"]:  # only where no store is built yet (above)
        changes.append(Change("config.change", "limits", _without_password(before["limits"]),
                              _without_password(after["limits"])))
    old_tenants, new_tenants = before["auth"]["tenants"], after["auth"]["tenants"]
    for name in sorted(old_tenants.keys() | new_tenants.keys()):
        changes += _tenant_changes(name, old_tenants.get(name), new_tenants.get(name))
    changes += _policy_change("guardrails", before["guardrails"], after["guardrails"])
    for name in after["groups"]:  # the groups are the same (a changed set of groups takes a restart)
        changes += _policy_change(f"groups.{name}.guardrails", before["groups"][name]["guardrails"],
                                  after["groups"][name]["guardrails"])
    for key, old_value, new_value in (("audit.record_texts", before["audit"]["record_texts"],
                                       after["audit"]["record_texts"]),
                                      ("max_body_bytes", before["max_body_bytes"], after["max_body_bytes"])):
        if old_value != new_value:
            changes.append(Change("config.change", key, old_value, new_value))
    return changes


def _fixed(config: dict[str, Any], limits_built: bool) -> dict[str, Any]:
    """A dumped config without its reloadable keys: what must be equal for a reload to apply."""
    fixed = {**config, "auth": {**config["auth"]}, "audit": {**config["audit"]},
             "groups": {name: {**group} for name, group in config["groups"].items()}}
    del fixed["guardrails"], fixed["max_body_bytes"], fixed["auth"]["tenants"], fixed["audit"]["record_texts"]
    if not limits_built:
        del fixed["limits"]
    for group in fixed["groups"].values():
        del group["guardrails"]
    return fixed


def _tenant_changes(name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Change]:
    target = f"auth.tenants.{name}"
    if old is None or new is None:
        return [Change("tenant.create" if old is None else "tenant.delete", target, old, new)]
    changes = []
    fields = [key for key in new if key not in ("limits", "guardrails") and old[key] != new[key]]
    if fields:
        changes.append(Change("tenant.change", target, {key: old[key] for key in fields},
                              {key: new[key] for key in fields}))
    limits = [key for key in new["limits"] if old["limits"][key] != new["limits"][key]]
    if limits:
        changes.append(Change("limits.change", f"{target}.limits", {key: old["limits"][key] for key in limits},
                              {key: new["limits"][key] for key in limits}))
    return changes + _policy_change(f"{target}.guardrails", old["guardrails"], new["guardrails"])


def _without_password(limits: dict[str, Any]) -> dict[str, Any]:
    """The limits section as an audit record may hold it: a Redis URL's password replaced by ``***``."""
    parts = urlsplit(limits["storage"])
    if parts.password is None:
        return limits
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host}"
    return {**limits, "storage": urlunsplit(parts._replace(netloc=netloc))}


def _policy_change(target: str, old: Any, new: Any) -> list[Change]:
    """A policy's change: the whole policy before and after (its checks are a list, read in order)."""
    return [] if old == new else [Change("policy.change", target, old, new)]


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The path of the first key where two dumped configs differ (a key added or removed included), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(key for key in new if key not in old)]:
            found = first_difference(old.get(key, _MISSING), new.get(key, _MISSING), _join(path, key))
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            found = first_difference(old[index] if index < len(old) else _MISSING,
                                     new[index] if index < len(new) else _MISSING, _join(path, index))
            if found is not None:
                return found
        return None
    return None if old == new else path or "(top level)"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
