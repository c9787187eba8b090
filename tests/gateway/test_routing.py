"""The routing policies on fake backends with chosen loads: power of two choices, prefix affinity with its
overload spill, session affinity on a hash ring, round robin; and the properties every policy keeps."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.config import RoutingConfig
from corral.gateway.routing import (
    LeastLoaded,
    PrefixAware,
    PrefixIndex,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    build_router,
    prompt_text,
)


@dataclass
class Fake:
    name: str
    in_flight: int = 0
    others: float = 0.0
    kv_usage: float = 0.0


SYSTEM = "You are a careful assistant. " * 20  # 580 characters shared by every request below


def test_least_loaded_takes_the_less_loaded_of_two_and_counts_waiting_and_kv_usage():
    router = LeastLoaded(RoutingConfig(kv_usage_weight=4.0), random.Random(0))
    busy, idle = Fake("busy", in_flight=3), Fake("idle", in_flight=1, others=1)
    assert all(router.pick(RouteRequest(), [busy, idle], 0).backend is idle for _ in range(20))
    full_kv = Fake("full-kv", in_flight=1, kv_usage=0.9)  # 1 + 3.6 > 3
    assert all(router.pick(RouteRequest(), [busy, full_kv], 0).backend is busy for _ in range(20))


def test_least_loaded_never_picks_the_most_loaded_of_three():
    router = LeastLoaded(RoutingConfig(), random.Random(0))
    backends = [Fake("a", 5), Fake("b", 0), Fake("c", 1)]
    picks = Counter(router.pick(RouteRequest(), backends, 0).backend.name for _ in range(300))
    assert picks["a"] == 0 and picks["b"] > picks["c"] > 0


def test_round_robin_cycles():
    router = RoundRobin(RoutingConfig())
    backends = [Fake("a"), Fake("b"), Fake("c")]
    assert [router.pick(RouteRequest(), backends, 0).backend.name for _ in range(6)] == list("abcabc")


def test_prefix_aware_keeps_a_shared_prefix_on_one_backend():
    router = PrefixAware(RoutingConfig(policy="prefix_aware"), random.Random(0))
    backends = [Fake("a"), Fake("b")]
    first = router.pick(RouteRequest(SYSTEM + "question 0"), backends, 0)
    assert first.reason == "prefix_miss"
    for i in range(1, 20):
        decision = router.pick(RouteRequest(SYSTEM + f"question {i}"), backends, i)
        assert decision.backend is first.backend and decision.reason == "prefix_hit"
    other = router.pick(RouteRequest("A different system prompt entirely. " * 10), backends, 30)
    assert other.reason == "prefix_miss"


def test_prefix_aware_prefers_the_longest_match():
    router = PrefixAware(RoutingConfig(policy="prefix_aware", prefix_chunk_chars=8), random.Random(0))
    a, b = Fake("a"), Fake("b")
    router.index("a").insert(router.index("a").keys_of(SYSTEM[:100]), 0)
    router.index("b").insert(router.index("b").keys_of(SYSTEM[:300]), 0)
    assert router.pick(RouteRequest(SYSTEM), [a, b], 1).backend is b
    assert router.pick(RouteRequest(SYSTEM[:120]), [a, b], 1).backend is b  # both hold 96+ chars: b holds more


def test_prefix_aware_spills_only_past_both_thresholds():
    config = RoutingConfig(policy="prefix_aware", balance_abs_threshold=4, balance_rel_threshold=2.0,
                           kv_usage_weight=0)
    router = PrefixAware(config, random.Random(0))
    a, b = Fake("a"), Fake("b")
    home = router.pick(RouteRequest(SYSTEM + "x"), [a, b], 0).backend
    away = b if home is a else a
    home.in_flight, away.in_flight = 5, 2  # +3: under the absolute threshold
    assert router.pick(RouteRequest(SYSTEM + "y"), [a, b], 1).reason == "prefix_hit"
    home.in_flight, away.in_flight = 12, 7  # +5 but under 2x
    assert router.pick(RouteRequest(SYSTEM + "y"), [a, b], 1).reason == "prefix_hit"
    home.in_flight, away.in_flight = 7, 2  # +5 and over 2x: spill
    decision = router.pick(RouteRequest(SYSTEM + "z"), [a, b], 2)
    assert decision.backend is away and decision.reason == "prefix_spill"


def test_prefix_entries_age_out_and_forget_drops_a_backend():
    router = PrefixAware(RoutingConfig(policy="prefix_aware", prefix_ttl_s=10), random.Random(0))
    a, b = Fake("a"), Fake("b")
    router.pick(RouteRequest(SYSTEM), [a, b], 0)
    assert router.pick(RouteRequest(SYSTEM), [a, b], 5).reason == "prefix_hit"
    assert router.pick(RouteRequest(SYSTEM), [a, b], 16).reason == "prefix_miss"  # last served at 5
    home = router.pick(RouteRequest(SYSTEM), [a, b], 17).backend
    router.forget(home.name)
    assert router.pick(RouteRequest(SYSTEM), [a, b], 18).reason == "prefix_miss"


@given(prompts=st.lists(st.text(min_size=0, max_size=300), max_size=40), max_chunks=st.integers(1, 50),
       chunk_chars=st.integers(1, 16))
@settings(max_examples=60, deadline=None)
def test_a_prefix_index_stays_within_its_bound(prompts, max_chunks, chunk_chars):
    index = PrefixIndex(chunk_chars, max_chunks, ttl_s=100)
    for now, prompt in enumerate(prompts):
        keys = index.keys_of(prompt)
        index.insert(keys, now)
        assert len(index) <= max_chunks
        # The newest prompt is always found whole, as far as the bound lets it stay.
        if len(keys) <= max_chunks:
            assert index.match_chars(keys, now) == len(keys) * chunk_chars


def test_session_affinity_is_stable_and_moves_only_the_lost_backends_sessions():
    router = SessionAffinity(RoutingConfig(policy="session"), random.Random(0))
    backends = [Fake("a"), Fake("b"), Fake("c")]
    sessions = [f"user-{i}" for i in range(300)]
    owners = {s: router.pick(RouteRequest(session_id=s), backends, 0).backend.name for s in sessions}
    assert set(Counter(owners.values())) == {"a", "b", "c"}
    assert all(router.pick(RouteRequest(session_id=s), backends, 1).backend.name == owners[s] for s in sessions)
    without_b = [backends[0], backends[2]]
    moved = {s for s in sessions if router.pick(RouteRequest(session_id=s), without_b, 2).backend.name != owners[s]}
    assert moved == {s for s in sessions if owners[s] == "b"}


def test_session_affinity_spills_when_its_backend_is_overloaded():
    router = SessionAffinity(RoutingConfig(policy="session", balance_abs_threshold=2, balance_rel_threshold=1.5),
                             random.Random(0))
    a, b = Fake("a"), Fake("b")
    owner = router.pick(RouteRequest(session_id="s"), [a, b], 0).backend
    other = b if owner is a else a
    owner.in_flight = 10
    decision = router.pick(RouteRequest(session_id="s"), [a, b], 0)
    assert decision.backend is other and decision.reason == "session_spill"


backends_strategy = st.lists(st.builds(Fake, st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 20),
                                       st.floats(0, 20), st.floats(0, 1)),
                             min_size=1, max_size=6, unique_by=lambda b: b.name)


@given(backends=backends_strategy, ejected=st.sets(st.integers(0, 5)),
       policy=st.sampled_from(["least_loaded", "prefix_aware", "session", "round_robin"]),
       prompts=st.lists(st.text(max_size=80), min_size=1, max_size=10), session=st.none() | st.text(max_size=5))
@settings(max_examples=100, deadline=None)
def test_no_policy_picks_a_backend_outside_the_candidates(backends, ejected, policy, prompts, session):
    # The group passes only available backends; an ejected one is simply not among them.
    candidates = [b for i, b in enumerate(backends) if i not in ejected] or backends[:1]
    router = build_router(RoutingConfig(policy=policy, prefix_chunk_chars=4, prefix_min_match_chars=4),
                          random.Random(0))
    for now, prompt in enumerate(prompts):
        router.pick(RouteRequest(prompt, session), backends, now)  # history on every backend
        assert router.pick(RouteRequest(prompt, session), candidates, now).backend in candidates


def test_prompt_text_of_completions_and_chat():
    assert prompt_text({"prompt": "hello"}) == "hello"
    assert prompt_text({"prompt": ["first", "second"]}) == "first"
    assert prompt_text({"prompt": [1, 2, 3]}) == "1 2 3"
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]}]}
    assert prompt_text(chat) == "<system>Be brief.\n<user>Hi\n"
    # Same system prompt, different user turn: the texts share the system part as a prefix.
    other = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bye"}]}
    assert prompt_text(other).startswith("<system>Be brief.\n<user>")
    assert prompt_text({}) == "" and prompt_text({"messages": "nonsense"}) == ""
