"""Properties of the autoscaling policy over random settings and random load sequences: the decision stays in
[min_replicas, max_replicas]; a change follows the previous one by at least its own delay (so no flapping),
cold starts excepted; and more load, from the same state, never asks for fewer replicas."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.autoscale import (
    AutoscalerState,
    AutoscalingConfig,
    MetricsSample,
    ReplicaLoad,
    ScalingDecision,
    decide,
)

fractions = st.sampled_from([0.0, 0.1, 0.35, 0.5, 0.8, 0.95, 1.0])  # cheaper to draw than floats


@st.composite
def configs(draw) -> AutoscalingConfig:
    min_replicas = draw(st.integers(0, 3))
    max_replicas = draw(st.integers(max(1, min_replicas), 8))
    return AutoscalingConfig(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        initial_replicas=draw(st.integers(min_replicas, max_replicas)),
        target_ongoing_requests=draw(st.sampled_from([0.5, 1, 2, 3.5])),
        target_kv_cache_usage=draw(st.none() | st.sampled_from([0.5, 0.8, 1.0])),
        target_compute_utilization=draw(st.none() | st.sampled_from([0.4, 0.7])),
        look_back_period_s=draw(st.sampled_from([1, 5, 30])),
        aggregation_function=draw(st.sampled_from(["mean", "max", "min"])),
        upscale_delay_s=draw(st.sampled_from([0, 2, 10])),
        downscale_delay_s=draw(st.sampled_from([0, 5, 20])),
        downscale_to_zero_delay_s=draw(st.none() | st.sampled_from([0, 3])) if min_replicas == 0 else None,
        upscaling_factor=draw(st.sampled_from([0.3, 1, 2])),
        downscaling_factor=draw(st.sampled_from([0.3, 1, 2])),
    )


def _replica_load(running: int, waiting: int, kv: float, cpu: float | None, gpu: float | None) -> ReplicaLoad:
    return ReplicaLoad(running, waiting, kv, cpu, gpu if cpu is not None else None)


# Built once: hypothesis validates a strategy each time one is made, which made a draw inside a loop slow.
replica_loads = st.builds(_replica_load, st.integers(0, 8), st.integers(0, 8), fractions, st.none() | fractions,
                          st.none() | fractions)
steps = st.tuples(st.sampled_from([0.5, 1, 2, 4]), st.lists(replica_loads, max_size=6), st.sampled_from([0, 0, 1, 3]))


def _timed(steps: list[tuple[float, list[ReplicaLoad], int]]) -> list[MetricsSample]:
    samples, time_s = [], 0.0
    for gap_s, replicas, queued in steps:
        time_s += gap_s
        samples.append(MetricsSample(time_s, tuple(replicas), queued))
    return samples


# Samples 0.5 to 4 s apart; healthy replicas 0 to 6, unrelated to the decisions (replicas fail, start late).
sequences = st.lists(steps, min_size=1, max_size=30).map(_timed)


@dataclass(frozen=True)
class Change:
    time_s: float
    before: int
    after: int
    decision: ScalingDecision


def run(config: AutoscalingConfig, samples: list[MetricsSample]) -> tuple[list[ScalingDecision], list[Change]]:
    state = AutoscalerState.start(config)
    decisions, changes = [], []
    for sample in samples:
        decision, next_state = decide(state, sample, config)
        decisions.append(decision)
        if decision.desired != state.target_replicas:
            changes.append(Change(sample.time_s, state.target_replicas, decision.desired, decision))
        state = next_state
    return decisions, changes


@settings(max_examples=120, deadline=None)
@given(configs(), sequences)
def test_the_decision_stays_within_min_and_max_replicas(config, samples):
    decisions, _ = run(config, samples)
    for decision in decisions:
        assert config.min_replicas <= decision.desired <= config.max_replicas, decision.reason


def delay_of(change: Change, config: AutoscalingConfig) -> float:
    if change.after > change.before:
        return config.upscale_delay_s
    return config.to_zero_delay_s if change.after == 0 else config.downscale_delay_s


@settings(max_examples=120, deadline=None)
@given(configs(), sequences)
def test_a_change_follows_the_last_one_by_at_least_its_delay(config, samples):
    _, changes = run(config, samples)
    previous_s = samples[0].time_s  # the first change too must have been asked for over its delay
    for change in changes:
        if change.decision.signal != "cold_start":  # a request waiting at zero replicas starts one at once
            assert change.time_s - previous_s >= delay_of(change, config), (change, previous_s)
        previous_s = change.time_s
    # Opposite directions in particular: up then down, or down then up, never within the second's delay.
    for first, second in zip(changes, changes[1:]):
        if (first.after > first.before) != (second.after > second.before) and second.decision.signal != "cold_start":
            assert second.time_s - first.time_s >= delay_of(second, config)


def more(load: ReplicaLoad, extra: tuple[int, int, float, float, float]) -> ReplicaLoad:
    running, waiting, kv, cpu, gpu = extra
    return ReplicaLoad(load.num_running + running, load.num_waiting + waiting,
                       min(1.0, load.kv_cache_usage + kv),
                       None if load.cpu_utilization is None else min(1.0, load.cpu_utilization + cpu),
                       None if load.gpu_utilization is None else min(1.0, load.gpu_utilization + gpu))


extras = st.tuples(st.integers(0, 6), st.integers(0, 6), fractions, fractions, fractions)
more_queued = st.integers(0, 4)


@settings(max_examples=150, deadline=None)
@given(configs(), sequences, st.data())
def test_more_load_from_the_same_state_never_asks_for_fewer_replicas(config, samples, data):
    state = AutoscalerState.start(config)
    for sample in samples[:-1]:
        _, state = decide(state, sample, config)
    lighter = samples[-1]
    heavier = MetricsSample(lighter.time_s, tuple(more(r, data.draw(extras)) for r in lighter.replicas),
                            lighter.num_queued_at_gateway + data.draw(more_queued))
    light, _ = decide(state, lighter, config)
    heavy, _ = decide(state, heavier, config)
    assert light.desired <= heavy.desired, (light.reason, heavy.reason)
