"""The gateway's configuration: model groups and their backends, read from YAML and validated at start.

Every model forbids unknown keys, so a misspelt knob is an error rather than a silent default; a bad file
fails with one line naming the key path (``gateway.yaml: groups.smol.backends.0.url: ...``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.errors import CorralError
from corral.gateway.audit import AuditConfig
from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.cache import CacheConfig
from corral.gateway.config_errors import describe
from corral.gateway.guardrails.policy import GuardrailPolicy
from corral.gateway.limits_config import LimitsConfig
from corral.gateway.tenants import TenantConfig, validated_policy

Policy = Literal["least_loaded", "prefix_aware", "session", "round_robin"]

# Arguments the gateway itself passes to each local replica, so a config may not set them.
_RESERVED_SERVE_ARGS = ("--host", "--port", "--served-model-name")


class GatewayConfigError(CorralError):
    """The gateway's configuration file or flags are invalid (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Strict):
    """One backend of a group: ``local`` (the arguments of a ``corral serve`` the gateway starts and supervises)
    or ``url`` (the base URL of any OpenAI-compatible server, without ``/v1``)."""

    name: str | None = None
    local: list[str] | None = None
    url: str | None = None
    model: str | None = Field(default=None, description="the name this backend serves, if not the group's")
    api_key: str | None = None
    scrape_metrics: bool = Field(default=True, description="read waiting/running/KV usage from its /metrics")
    # A url backend inside this host or cluster: local_only tenants may reach it (local replicas always are).
    on_premises: bool = False
    # Whether it schedules by vLLM's `priority` field, so a tenant's priority class is sent to it. None: yes for
    # a local replica (corral serve does), no for a url (vLLM refuses a non-zero one unless it was started with
    # --scheduling-policy priority).
    priority: bool | None = None

    @property
    def takes_priority(self) -> bool:
        return self.local is not None if self.priority is None else self.priority

    @model_validator(mode="after")
    def _one_kind(self) -> BackendConfig:
        if (self.local is None) == (self.url is None):
            raise ValueError("a backend needs exactly one of `local` (corral serve arguments) or `url`")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        for arg in self.local or ():
            if arg.split("=")[0] in _RESERVED_SERVE_ARGS:
                raise ValueError(f"local: {arg.split('=')[0]} is set by the gateway")
        return self


class RoutingConfig(_Strict):
    """How a group picks one of its backends. Loads are in requests (routing.load_of: in flight at the gateway,
    or the backend's reported running and waiting ones if more), plus ``kv_usage_weight`` times its KV usage."""

    policy: Policy = "least_loaded"
    kv_usage_weight: float = Field(default=4.0, ge=0)
    # The affinity of prefix_aware and session yields to the least loaded backend when the preferred one's
    # load exceeds it by both of these (SGLang's balance_abs_threshold / balance_rel_threshold).
    balance_abs_threshold: float = Field(default=4.0, ge=0)
    balance_rel_threshold: float = Field(default=1.5, ge=1)
    prefix_chunk_chars: int = Field(default=32, ge=1, description="resolution of the prefix index")
    prefix_min_match_chars: int = Field(default=32, ge=0, description="shorter shared prefixes are ignored")
    prefix_max_chunks: int = Field(default=65536, ge=1, description="bound of each backend's prefix index")
    prefix_ttl_s: float = Field(default=600.0, gt=0)
    session_header: str = "x-session-id"
    virtual_nodes: int = Field(default=64, ge=1, description="points per backend on the session hash ring")


class TimeoutConfig(_Strict):
    """Seconds. ``first_byte_s`` bounds the wait for a backend's first output (a retry is still possible until
    then); ``request_s`` the whole request, which a client may lower with the ``x-request-timeout`` header."""

    connect_s: float = Field(default=2.0, gt=0)
    first_byte_s: float = Field(default=120.0, gt=0)
    idle_s: float = Field(default=60.0, gt=0)
    request_s: float = Field(default=600.0, gt=0)


class HealthConfig(_Strict):
    """Active checks of each backend's ``/health``, and the interval at which its ``/metrics`` is scraped."""

    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    # One slow answer from a replica busy on a long prefill is not yet a failure.
    unhealthy_after: int = Field(default=2, ge=1, description="consecutive failed checks that take it out")
    metrics_interval_s: float = Field(default=0.5, gt=0)


class EjectionConfig(_Strict):
    """Passive outlier ejection: this many consecutive failures or timeouts take a backend out of routing for
    ``cooldown_s``."""

    consecutive_failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=10.0, gt=0)


class ReplicaConfig(_Strict):
    """How local replicas are supervised: restarted with exponential backoff when they exit. In an autoscaled
    group, also how one is taken away (drained for at most ``drain_timeout_s``) and how many fit on this host
    (docs/autoscaling.md#the-local-backend): a replica counts as its measured memory and ``cores_per_replica``
    cores, and ``reserve_memory_bytes`` of the host's available memory is left to everything else."""

    startup_timeout_s: float = Field(default=300.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)
    drain_timeout_s: float = Field(default=60.0, ge=0, description="in-flight requests are waited for this long")
    reserve_memory_bytes: int = Field(default=1024**3, ge=0)
    cores_per_replica: float = Field(default=1.0, gt=0)


class GroupConfig(_Strict):
    """A model group: the name clients send as ``model`` maps to these interchangeable backends."""

    backends: list[BackendConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    health: HealthConfig = HealthConfig()
    ejection: EjectionConfig = EjectionConfig()
    replicas: ReplicaConfig = ReplicaConfig()
    retries: int = Field(default=2, ge=0, description="other backends tried when one fails before its first byte")
    # Token limits (docs/gateway.md): a max_tokens over the cap is clamped, never refused; a missing one gets
    # the default (else the cap). The whole request's time limit is timeouts.request_s.
    max_tokens_cap: int | None = Field(default=None, ge=1)
    default_max_tokens: int | None = Field(default=None, ge=1)
    max_prompt_chars: int | None = Field(default=None, ge=1, description="longer prompts: 400, or a fallback")
    # Fallback (docs/gateway.md): groups tried in order when this one cannot answer.
    fallbacks: list[str] = Field(default_factory=list)
    allow_fallback: bool | None = Field(default=None, description="default: true when fallbacks are listed")
    overload: float | None = Field(default=None, gt=0, description="a backend at this load or more is overloaded")
    # The local backend scales copies of the group's one `local:` backend (docs/autoscaling.md).
    autoscaling: AutoscalingConfig | None = None
    # Checks run after the tenant's (or gateway-wide) policy on every request to this group, whatever its tenant
    # (docs/guardrails.md#per-group-policies): about where this group's backends send the data.
    guardrails: GuardrailPolicy | None = None

    _guardrails_valid = field_validator("guardrails", mode="before")(validated_policy)

    @model_validator(mode="after")
    def _default_under_cap(self) -> GroupConfig:
        cap, default = self.max_tokens_cap, self.default_max_tokens
        if cap is not None and default is not None and default > cap:
            raise ValueError(f"default_max_tokens {default} exceeds max_tokens_cap {cap}")
        return self

    @property
    def fallback_allowed(self) -> bool:
        return bool(self.fallbacks) if self.allow_fallback is None else self.allow_fallback and bool(self.fallbacks)

    @property
    def answers_429(self) -> bool:
        """A group that names fallbacks (or forbids them) answers 429 + Retry-After when it cannot answer."""
        return bool(self.fallbacks) or self.allow_fallback is not None


class AuthConfig(_Strict):
    """API keys and tenants (docs/gateway.md#tenants-and-api-keys). Off, no key is asked for. Keys live in
    ``store`` (SQLite; a relative path is relative to the working directory), the admin API's key in the
    environment variable named ``admin_key_env`` (unset: the admin API is refused)."""

    enabled: bool = False
    store: str = "corral-keys.sqlite"
    admin_key_env: str = "CORRAL_GATEWAY_ADMIN_KEY"
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)


class GatewayConfig(_Strict):
    """The whole file: where the gateway listens, its model groups, and its cache, auth (tenants and keys), the
    store of the tenants' limits (``limits``), the audit log (``audit``) and the content policy of requests whose
    tenant has none of its own (``guardrails``; with auth off, of every request)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    groups: dict[str, GroupConfig] = Field(min_length=1)
    cache: CacheConfig = CacheConfig()
    max_body_bytes: int = Field(default=8 * 1024**2, ge=1, description="larger request bodies get 413")
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    guardrails: GuardrailPolicy | None = None

    _guardrails_valid = field_validator("guardrails", mode="before")(validated_policy)

    @model_validator(mode="after")
    def _fallbacks_exist_without_cycles(self) -> GatewayConfig:
        for name, group in self.groups.items():
            for i, target in enumerate(group.fallbacks):
                if target not in self.groups:
                    raise ValueError(f"groups.{name}.fallbacks.{i}: no group named {target!r}")
        for name in self.groups:
            cycle = _fallback_cycle(self.groups, name, [])
            if cycle:
                raise ValueError(f"groups.{name}.fallbacks: a cycle: {' -> '.join(cycle)}")
        return self

    @model_validator(mode="after")
    def _autoscaled_groups_have_one_local_backend(self) -> GatewayConfig:
        for name, group in self.groups.items():
            if group.autoscaling is None:
                continue
            # One template, so that every replica is the same replica: the policy's per-replica targets assume it.
            if len(group.backends) != 1:
                raise ValueError(f"groups.{name}.autoscaling: an autoscaled group lists exactly one backend, a "
                                 f"`local:` one that each replica copies; got {len(group.backends)}")
            if group.backends[0].local is None:
                raise ValueError(f"groups.{name}.autoscaling: backends.0 is a `url` backend; the gateway scales "
                                 "only local replicas (scale a remote server where it runs)")
        return self

    @model_validator(mode="after")
    def _tenants_name_groups(self) -> GatewayConfig:
        if self.auth.enabled and not self.auth.tenants:
            raise ValueError("auth.tenants: auth is enabled but no tenant is declared")
        for name, tenant in self.auth.tenants.items():
            for i, group in enumerate(tenant.groups):
                if group != "*" and group not in self.groups:
                    raise ValueError(f"auth.tenants.{name}.groups.{i}: no group named {group!r}")
            # Without auth no request has a tenant: its limits would be silently unenforced.
            if tenant.limits.model_dump(exclude_none=True) and not self.auth.enabled:
                raise ValueError(f"auth.tenants.{name}.limits: auth is not enabled (auth.enabled), so no request has "
                                 "a tenant to limit")
            if tenant.guardrails is not None and not self.auth.enabled:
                raise ValueError(f"auth.tenants.{name}.guardrails: auth is not enabled (auth.enabled), so no request "
                                 "has a tenant; use the gateway-wide `guardrails:`")
        return self

    @model_validator(mode="after")
    def _limits_store_used(self) -> GatewayConfig:
        limited = any(tenant.limits.model_dump(exclude_none=True) for tenant in self.auth.tenants.values())
        if "limits" in self.model_fields_set and not limited:
            raise ValueError("limits: no tenant has limits (auth.tenants.<name>.limits), so this section would "
                             "change nothing")
        return self


def _fallback_cycle(groups: dict[str, GroupConfig], name: str, path: list[str]) -> list[str]:
    if name in path:
        return [*path[path.index(name):], name]
    for target in groups[name].fallbacks:
        cycle = _fallback_cycle(groups, target, [*path, name])
        if cycle:
            return cycle
    return []


def load_config(path: str | os.PathLike) -> GatewayConfig:
    """Reads and validates a YAML file; raises GatewayConfigError with one line naming the bad key."""
    return parse_config(read_yaml(path), Path(path).name)


def read_yaml(path: str | os.PathLike) -> object:
    """A YAML file's data; GatewayConfigError with one line when it cannot be read or parsed."""
    return parse_yaml(_read_bytes(path), Path(path).name)


def parse_yaml(raw: bytes, name: str) -> object:
    """YAML bytes' data; GatewayConfigError with one line (``name: line N: ...``) when they cannot be parsed."""
    import yaml

    try:
        return yaml.safe_load(raw.decode())
    except UnicodeDecodeError as error:
        raise GatewayConfigError(f"{name}: not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        raise GatewayConfigError(f"{name}: {line}not valid YAML: {getattr(error, 'problem', error)}") from None


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise GatewayConfigError(f"{path}: cannot read: {error.strerror}") from None


@dataclass(frozen=True)
class ConfigFile:
    """The YAML file a gateway was started from, and the flags that override its values (``--host``,
    ``--port``): what a reload reads again (reload.py)."""

    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    def read(self) -> tuple[GatewayConfig, str]:
        """The file's config (the overrides applied) and the SHA-256 (hex) of the bytes it was read from;
        GatewayConfigError with one line when it cannot be read, parsed or validated."""
        raw = self.read_bytes()
        return self.parse(raw), hashlib.sha256(raw).hexdigest()

    def read_bytes(self) -> bytes:
        return _read_bytes(self.path)

    def parse(self, raw: bytes) -> GatewayConfig:
        config = parse_config(parse_yaml(raw, self.path.name), self.path.name)
        return config.model_copy(update=self.overrides)


def parse_config(data: object, source: str = "config") -> GatewayConfig:
    """Validates already-parsed data (a dict, as from YAML)."""
    if not isinstance(data, dict):
        raise GatewayConfigError(f"{source}: expected a mapping with a `groups` key, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise GatewayConfigError(f"{source}: {describe(error)}") from None


def simple_config(model: str, replicas: int | None = None, policy: Policy = "least_loaded",
                  serve_args: list[str] | None = None, name: str | None = None, host: str = "127.0.0.1",
                  port: int = 8080, autoscale: tuple[int, int] | None = None,
                  target_ongoing_requests: float | None = None) -> GatewayConfig:
    """``corral gateway --model M --replicas N``: one group of N local replicas of one model; with ``autoscale``
    (``--autoscale MIN:MAX``) one autoscaled replica template instead, started at N (default MIN)."""
    if replicas is not None and replicas < 1:
        raise GatewayConfigError(f"--replicas must be at least 1, got {replicas}")
    if target_ongoing_requests is not None and autoscale is None:
        raise GatewayConfigError("--target-ongoing-requests needs --autoscale MIN:MAX")
    group = name or group_name(model)
    backend = {"local": ["--model", model, *(serve_args or [])]}
    config: dict = {"backends": [backend] * (replicas or 1), "routing": {"policy": policy}}
    if autoscale is not None:
        scaling = {"min_replicas": autoscale[0], "max_replicas": autoscale[1]}
        if replicas is not None:
            scaling["initial_replicas"] = replicas
        if target_ongoing_requests is not None:
            scaling["target_ongoing_requests"] = target_ongoing_requests
        config.update(backends=[backend], autoscaling=scaling)
    return parse_config({"host": host, "port": port, "groups": {group: config}}, "flags")


def parse_autoscale(text: str) -> tuple[int, int]:
    """``--autoscale MIN:MAX`` as two integers (GatewayConfigError naming the flag otherwise)."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise GatewayConfigError(f"--autoscale takes MIN:MAX replicas, e.g. 1:3; got {text!r}") from None


def group_name(model: str) -> str:
    """The name clients send for a model path: its file or folder name, without ``.gguf``."""
    return os.path.basename(os.path.normpath(model)).removesuffix(".gguf")
