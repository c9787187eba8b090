"""What the response cache may answer, and under which key: the canonical key of a request, whether a request is
deterministic enough to cache, and the request's ``Cache-Control`` directives. Pure functions, no IO.

The key is conservative by design: two requests share a key only when the upstream must compute the same
answer for both. Only fields that cannot change the answer are dropped, and only defaults that OpenAI documents
(and every OpenAI-compatible server follows) are filled in; anything unknown stays in the key as sent, so an
unknown field costs a miss, never a wrong hit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.gateway.cache import CacheConfig

# Bump when the canonical form changes: old entries then simply stop matching.
KEY_VERSION = 1

# Fields that change neither the tokens nor the bytes a cached answer is rendered from. ``stream`` and
# ``stream_options`` change only the framing, which the cache redoes itself (cache_sse.replay_as_sse).
NO_OUTPUT_FIELDS = frozenset({
    "stream", "stream_options", "user", "metadata", "store", "safety_identifier", "prompt_cache_key",
})

# OpenAI's documented defaults: an absent (or null) field and its default ask the server for the same thing.
_FLOAT_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
_OTHER_DEFAULTS: dict[str, Any] = {"n": 1, "echo": False}
_CHAT_DEFAULTS: dict[str, Any] = {"logprobs": False}


def is_chat(path: str) -> bool:
    """True for ``/v1/chat/completions``, False for ``/v1/completions`` (the two paths the cache serves)."""
    return path.rstrip("/").endswith("chat/completions")


def _number(value: Any) -> Any:
    """0 and 0.0 (and -0.0) are one temperature; a bool or a string is left alone for the upstream to refuse."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) + 0.0
    return value


def normalized_body(path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request body as the key sees it: no-output fields dropped, documented defaults filled in, numbers of
    the float fields as floats, ``stop`` as a list. Everything else is kept exactly as sent."""
    out = {k: v for k, v in body.items() if k not in NO_OUTPUT_FIELDS}
    defaults = {**_OTHER_DEFAULTS, **(_CHAT_DEFAULTS if is_chat(path) else {})}
    for name, default in defaults.items():
        if out.get(name) is None:
            out[name] = default
    for name, default in _FLOAT_DEFAULTS.items():
        out[name] = _number(default if out.get(name) is None else out[name])
    stop = out.get("stop")
    out["stop"] = [] if stop is None else [stop] if isinstance(stop, str) else stop
    return out


def cache_key(group: str, path: str, body: Mapping[str, Any], tenant: str | None = None) -> str:
    """The sha256 (hex) of the canonical JSON of (version, tenant, group, path, normalized body). ``tenant`` is
    None until the gateway has tenants; a tenant never shares an entry with another or with no tenant."""
    canonical = {"v": KEY_VERSION, "tenant": tenant, "group": group, "path": path.rstrip("/"),
                 "body": normalized_body(path, body)}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Cacheability:
    """Whether a request may be answered from (and stored in) the cache, and why not. Truthy when it may."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def is_cacheable(body: Mapping[str, Any], config: CacheConfig) -> Cacheability:
    """Deterministic requests only, unless ``config.cache_sampled``: temperature 0 (an absent temperature is
    OpenAI's default 1, not 0), or a fixed integer ``seed``. ``n > 1``, ``logprobs`` and ``echo`` are as
    deterministic as the rest of the request. Bodies that are not an object, or lack ``model``, are not cached."""
    if not config.enabled:
        return Cacheability(False, "cache disabled")
    if not isinstance(body, Mapping) or "model" not in body:
        return Cacheability(False, "not a completion request body")
    if config.cache_sampled:
        return Cacheability(True, "cache_sampled allows every request")
    temperature = _number(body.get("temperature"))
    if temperature == 0.0:
        return Cacheability(True, "temperature 0")
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return Cacheability(True, "fixed seed")
    if temperature is None:
        return Cacheability(False, "sampled: no temperature (OpenAI's default is 1) and no seed")
    return Cacheability(False, f"sampled: temperature {body.get('temperature')!r} and no seed")


@dataclass(frozen=True)
class CacheDirectives:
    """The request's ``Cache-Control``: ``no_cache`` skips the lookup (a fresh answer is still stored),
    ``no_store`` keeps the answer out of the cache (a stored one may still be served)."""

    no_cache: bool = False
    no_store: bool = False


def cache_control(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> CacheDirectives:
    """Parses every ``Cache-Control`` header (names and directives case-insensitive, comma-separated, arguments
    ignored). Takes a mapping (a plain dict, or starlette's Headers, whose repeated headers are all read) or
    (name, value) pairs."""
    if hasattr(headers, "getlist"):  # starlette / httpx Headers: a repeated header is one value each
        values = list(headers.getlist("cache-control"))  # type: ignore[union-attr]
    else:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        values = [v for k, v in pairs if k.lower() == "cache-control"]
    directives = {part.split("=", 1)[0].strip().lower() for value in values for part in value.split(",")}
    return CacheDirectives(no_cache="no-cache" in directives, no_store="no-store" in directives)
