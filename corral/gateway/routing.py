"""Routing inside a group: which of its available backends takes a request. Pure: no IO, no clock of its own
(``now`` is passed in), so every policy is unit-tested with fake loads."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.gateway.config import RoutingConfig


class BackendView(Protocol):
    """What a router may read of a backend: its name and load signals (in flight from this gateway, exact and
    current; the requests other clients have there and its KV usage, as last scraped from its /metrics, zero
    where unknown)."""

    @property
    def name(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def others(self) -> float: ...
    @property
    def kv_usage(self) -> float: ...


@dataclass(frozen=True)
class RouteRequest:
    """The parts of a request routing looks at."""

    prompt_text: str = ""
    session_id: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """The chosen backend and why (a metric label: ``least_loaded``, ``prefix_hit``, ``prefix_miss``,
    ``prefix_spill``, ``session``, ``session_spill``, ``round_robin``)."""

    backend: BackendView
    reason: str


class Router(Protocol):
    """Picks one backend for a request. Invariant: the pick is always one of ``candidates`` (the caller passes
    only available backends, never an empty list)."""

    def pick(self, request: RouteRequest, candidates: Sequence[BackendView], now: float) -> RouteDecision:
        """Chooses among ``candidates`` and records what affinity state the policy keeps."""
        ...

    def forget(self, backend_name: str) -> None:
        """Drops the state kept for a backend whose cache is gone (it restarted or was removed)."""
        ...


def load_of(backend: BackendView, kv_usage_weight: float) -> float:
    """Requests at the backend (this gateway's, counted as they come and go, plus other clients' as of the last
    scrape), plus ``kv_usage_weight`` times its KV usage (0-1). Not the replica's own running + waiting count
    as such: it lags by up to a scrape interval, so a replica that has just finished requests would look busy."""
    return backend.in_flight + backend.others + kv_usage_weight * backend.kv_usage


class LeastLoaded:
    """Power of two choices: two distinct backends at random, the less loaded of them (ties at random).
    Near-optimal balance without herding every gateway onto the one backend that looked idlest."""

    def __init__(self, config: RoutingConfig, rng: random.Random | None = None):
        self.kv_usage_weight = config.kv_usage_weight
        self.rng = rng or random.Random()

    def choose(self, candidates: Sequence[BackendView]) -> BackendView:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        load_first, load_second = load_of(first, self.kv_usage_weight), load_of(second, self.kv_usage_weight)
        if load_first == load_second:
            return first  # already a random one of the two
        return first if load_first < load_second else second

    def pick(self, request: RouteRequest, candidates: Sequence[BackendView], now: float) -> RouteDecision:
        return RouteDecision(self.choose(candidates), "least_loaded")

    def forget(self, backend_name: str) -> None:
        pass


class RoundRobin:
    """Each backend in turn (for comparison)."""

    def __init__(self, config: RoutingConfig):
        self._counter = itertools.count()

    def pick(self, request: RouteRequest, candidates: Sequence[BackendView], now: float) -> RouteDecision:
        return RouteDecision(candidates[next(self._counter) % len(candidates)], "round_robin")

    def forget(self, backend_name: str) -> None:
        pass


def overloaded(preferred: BackendView, least: BackendView, config: RoutingConfig) -> bool:
    """Whether ``preferred`` is so much busier than ``least`` that affinity should yield: by both the absolute
    and the relative threshold (one alone would spill on noise at low load, or never at high load)."""
    preferred_load = load_of(preferred, config.kv_usage_weight)
    least_load = load_of(least, config.kv_usage_weight)
    return (preferred_load - least_load > config.balance_abs_threshold
            and preferred_load > least_load * config.balance_rel_threshold)


def least_loaded_of(candidates: Sequence[BackendView], kv_usage_weight: float) -> BackendView:
    return min(candidates, key=lambda backend: load_of(backend, kv_usage_weight))


class PrefixIndex:
    """The prompt prefixes one backend served recently, bounded and aged out. A prompt is cut into chunks of
    ``chunk_chars`` characters and each chunk keyed by a hash chained over all before it, so a key stands for a
    whole prefix; the longest shared prefix is the run of leading keys present. LRU past ``max_chunks``
    entries, and an entry older than ``ttl_s`` counts as absent (the backend's own cache has likely evicted it)."""

    def __init__(self, chunk_chars: int, max_chunks: int, ttl_s: float):
        self.chunk_chars = chunk_chars
        self.max_chunks = max_chunks
        self.ttl_s = ttl_s
        self._entries: OrderedDict[int, float] = OrderedDict()  # prefix key -> last served (seconds)

    def __len__(self) -> int:
        return len(self._entries)

    def keys_of(self, text: str) -> list[int]:
        keys, previous = [], 0
        for start in range(0, len(text) - self.chunk_chars + 1, self.chunk_chars):
            previous = hash((previous, text[start:start + self.chunk_chars]))
            keys.append(previous)
        return keys

    def match_chars(self, keys: Sequence[int], now: float) -> int:
        """Characters of the prompt (whole chunks) that this backend served recently."""
        matched = 0
        for key in keys:
            served = self._entries.get(key)
            if served is None or now - served > self.ttl_s:
                break
            matched += 1
        return matched * self.chunk_chars

    def insert(self, keys: Sequence[int], now: float) -> None:
        for key in keys:
            self._entries[key] = now
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_chunks:
            self._entries.popitem(last=False)


class PrefixAware:
    """To the backend that most recently served the longest shared prefix of the prompt, whose KV cache likely
    still holds it; to the least loaded backend when there is no such prefix or that backend is overloaded."""

    def __init__(self, config: RoutingConfig, rng: random.Random | None = None):
        self.config = config
        self.balancer = LeastLoaded(config, rng)
        self.indexes: dict[str, PrefixIndex] = {}

    def index(self, backend_name: str) -> PrefixIndex:
        if backend_name not in self.indexes:
            c = self.config
            self.indexes[backend_name] = PrefixIndex(c.prefix_chunk_chars, c.prefix_max_chunks, c.prefix_ttl_s)
        return self.indexes[backend_name]

    def pick(self, request: RouteRequest, candidates: Sequence[BackendView], now: float) -> RouteDecision:
        keys = self.index(candidates[0].name).keys_of(request.prompt_text)
        matches = [(self.index(backend.name).match_chars(keys, now), backend) for backend in candidates]
        best_chars = max(matched for matched, _ in matches)
        if best_chars >= max(self.config.prefix_min_match_chars, 1):
            best = least_loaded_of([b for matched, b in matches if matched == best_chars], self.config.kv_usage_weight)
            least = least_loaded_of(candidates, self.config.kv_usage_weight)
            if overloaded(best, least, self.config):
                decision = RouteDecision(least, "prefix_spill")
            else:
                decision = RouteDecision(best, "prefix_hit")
        else:
            decision = RouteDecision(self.balancer.choose(candidates), "prefix_miss")
        self.index(decision.backend.name).insert(keys, now)
        return decision

    def forget(self, backend_name: str) -> None:
        self.indexes.pop(backend_name, None)


class SessionAffinity:
    """Consistent hashing of the session header onto a ring of ``virtual_nodes`` points per backend: a session
    stays on its backend, and a backend leaving moves only its own sessions. Requests without the header, or
    whose backend is overloaded, go to the least loaded backend."""

    def __init__(self, config: RoutingConfig, rng: random.Random | None = None):
        self.config = config
        self.balancer = LeastLoaded(config, rng)
        self._rings: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    def _ring(self, names: tuple[str, ...]) -> tuple[list[int], list[str]]:
        if names not in self._rings:
            points = sorted((_stable_hash(f"{name}#{i}"), name) for name in names
                            for i in range(self.config.virtual_nodes))
            if len(self._rings) > 64:  # membership changes; keep only recent sets
                self._rings.clear()
            self._rings[names] = ([point for point, _ in points], [name for _, name in points])
        return self._rings[names]

    def owner(self, session_id: str, candidates: Sequence[BackendView]) -> BackendView:
        by_name = {backend.name: backend for backend in candidates}
        hashes, names = self._ring(tuple(sorted(by_name)))
        at = bisect.bisect(hashes, _stable_hash(session_id)) % len(hashes)
        return by_name[names[at]]

    def pick(self, request: RouteRequest, candidates: Sequence[BackendView], now: float) -> RouteDecision:
        if request.session_id is None:
            return RouteDecision(self.balancer.choose(candidates), "least_loaded")
        owner = self.owner(request.session_id, candidates)
        least = least_loaded_of(candidates, self.config.kv_usage_weight)
        if overloaded(owner, least, self.config):
            return RouteDecision(least, "session_spill")
        return RouteDecision(owner, "session")

    def forget(self, backend_name: str) -> None:
        pass


def _stable_hash(text: str) -> int:
    # Stable across processes (unlike hash()), so every gateway of a fleet maps a session alike.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def build_router(config: RoutingConfig, rng: random.Random | None = None) -> Router:
    """The policy a group's config names."""
    if config.policy == "prefix_aware":
        return PrefixAware(config, rng)
    if config.policy == "session":
        return SessionAffinity(config, rng)
    if config.policy == "round_robin":
        return RoundRobin(config)
    return LeastLoaded(config, rng)


def prompt_text(body: dict) -> str:
    """The text a request's prompt begins with, for the prefix index: a completions prompt (the first, when a
    list), or the chat messages joined role by role, roughly as a chat template renders them."""
    if "messages" in body:
        parts = []
        for message in body.get("messages") or ():
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"<{message.get('role', '')}>{content if isinstance(content, str) else ''}\n")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch: the first prompt
    if isinstance(prompt, list):  # token ids
        return " ".join(str(token) for token in prompt)
    return prompt if isinstance(prompt, str) else ""
