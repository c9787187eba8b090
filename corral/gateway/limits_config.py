"""The ``limits:`` section of the gateway's config (docs/gateway.md#rate-limits-and-budgets): where the tenants'
rate-limit windows, requests in flight and budgets live. Apart from limits.py so that reading the config does not
import the ``limits`` library, which a gateway needs only when some tenant has limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Strategy = Literal["moving_window", "sliding_window_counter", "fixed_window"]
_SCHEMES = ("memory", "redis", "rediss")


class LimitsConfig(BaseModel):
    """Where the windows live and how they count.

    ``requests_strategy`` defaults to ``moving_window``: exact (no window boundary lets twice the limit through,
    as ``fixed_window`` does) and its ``Retry-After`` is exact, at a cost of one entry per request in the window.
    ``tokens_strategy`` defaults to ``sliding_window_counter``: a moving window keeps one entry per *token*
    (a 1M tokens/min tenant: a million-entry list, and a 2000-token hit pushes 2000 entries), while the sliding
    window counter keeps two counters and weighs the previous minute's by the part of it still in the window; its
    ``Retry-After`` is the library's estimate of when a token frees up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(default="memory://", description="memory:// (this process) or a redis:// URL (a fleet)")
    requests_strategy: Strategy = "moving_window"
    tokens_strategy: Strategy = "sliding_window_counter"
    budget_path: str = Field(default="corral-budgets.sqlite",
                             description="SQLite file of the budgets' usage when storage is memory://; with Redis, "
                                         "usage lives in Redis")
    concurrency_lease_s: float = Field(default=3600.0, gt=0, description=(
        "with Redis, a request in flight that no gateway releases (it died) stops counting after this; keep it "
        "above the longest request time limit"))
    fail_open: bool = Field(default=True, description=(
        "when the store fails, admit the request (logged and counted) instead of answering 503"))
    timeout_s: float = Field(default=0.25, gt=0, description="Redis connect and socket timeout")
    store_retry_s: float = Field(default=1.0, ge=0, description=(
        "after a store failure, requests skip the store this long (fail_open decides how they are answered)"))
    namespace: str = "corral"

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if not sep or scheme not in _SCHEMES:
            # Its scheme only: the rest of a URL may hold a password, and this message reaches logs and the audit.
            raise ValueError(f"must be memory:// or a redis:// or rediss:// URL, got scheme {scheme!r}"
                             if sep else "must be memory:// or a redis:// or rediss:// URL")
        return value

    @property
    def uses_redis(self) -> bool:
        return not self.storage.startswith("memory://")
