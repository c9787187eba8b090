"""The autoscaling policy on recorded metric sequences (one sample a second): each rule of docs/autoscaling.md
with the decisions it must give, second by second, and the reason it must state. ``open loop``: the recorded
replica count stays as recorded; ``closed loop``: the replicas follow each decision at once (a backend that
starts replicas instantly), so a sequence of steps can be followed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from corral.gateway.autoscale import (
    Autoscaler,
    AutoscalingConfig,
    MetricsSample,
    ReplicaCap,
    ReplicaLoad,
    ScalingDecision,
)


def spread(total: int, num_replicas: int, kv: float = 0.0, cpu: float | None = None,
           gpu: float | None = None) -> tuple[ReplicaLoad, ...]:
    """``total`` ongoing requests over ``num_replicas`` replicas, as evenly as may be, half running, half waiting."""
    loads = []
    for i in range(num_replicas):
        ongoing = total // num_replicas + (i < total % num_replicas)
        loads.append(ReplicaLoad(num_running=ongoing - ongoing // 2, num_waiting=ongoing // 2, kv_cache_usage=kv,
                                 cpu_utilization=cpu, gpu_utilization=gpu))
    return tuple(loads)


def open_loop(config: AutoscalingConfig, num_replicas: int, total_at: Callable[[int], int], seconds: int,
              **replica: float | None) -> list[ScalingDecision]:
    """The decisions on a recorded sequence of ``num_replicas`` replicas (the count they start from)."""
    autoscaler = Autoscaler(config.model_validate({**config.model_dump(), "initial_replicas": num_replicas}))
    return [autoscaler.observe(MetricsSample(t, spread(total_at(t), num_replicas, **replica)))
            for t in range(seconds)]


def closed_loop(config: AutoscalingConfig, total_at: Callable[[int], int], seconds: int) -> list[ScalingDecision]:
    autoscaler = Autoscaler(config)
    decisions = []
    for t in range(seconds):
        num_replicas, total = autoscaler.desired, total_at(t)
        queued = total if num_replicas == 0 else 0
        decisions.append(autoscaler.observe(MetricsSample(t, spread(total - queued, num_replicas), queued)))
    return decisions


def desired(decisions: list[ScalingDecision]) -> list[int]:
    return [d.desired for d in decisions]


def config(**settings) -> AutoscalingConfig:
    base = {"min_replicas": 1, "max_replicas": 10, "target_ongoing_requests": 2, "look_back_period_s": 1,
            "upscale_delay_s": 0, "downscale_delay_s": 600}
    return AutoscalingConfig(**{**base, **settings})


def test_a_burst_scales_up_only_once_it_has_lasted_upscale_delay_s():
    decisions = open_loop(config(upscale_delay_s=10), 1, lambda t: 8 if t >= 5 else 2, 21)
    assert desired(decisions) == [1] * 15 + [4] * 6
    assert decisions[10].reason == ("ongoing requests 8/replica over target 2: 4 wanted, holding 1 for "
                                    "upscale_delay_s (5 of 10 s)")
    assert decisions[15].reason == "ongoing requests 8/replica over target 2: scale up 1 -> 4"
    assert decisions[15].signal == "ongoing_requests"


def test_the_delay_needs_the_burst_uninterrupted():
    # Two bursts of 7 and 8 seconds with a lull between: neither lasts upscale_delay_s.
    decisions = open_loop(config(upscale_delay_s=10), 1, lambda t: 8 if 5 <= t < 12 or 14 <= t < 22 else 2, 30)
    assert desired(decisions) == [1] * 30
    assert decisions[13].reason == "ongoing requests 2/replica at target 2: steady at 1"


def test_idle_scales_down_only_once_it_has_lasted_downscale_delay_s():
    decisions = open_loop(config(downscale_delay_s=20), 4, lambda t: 8 if t < 10 else 2, 36)
    assert desired(decisions) == [4] * 30 + [1] * 6
    assert decisions[29].reason.endswith("1 wanted, holding 4 for downscale_delay_s (19 of 20 s)")
    assert decisions[30].reason == "ongoing requests 0.5/replica under target 2: scale down 4 -> 1"


def test_factors_close_part_of_the_gap_at_each_step():
    damped = config(initial_replicas=2, max_replicas=20, downscale_delay_s=0, upscaling_factor=0.5,
                    downscaling_factor=0.5)
    load = lambda t: 20 if t < 10 else 2  # noqa: E731
    # Up: ceil(n + (10 - n) / 2); down: ceil(n + (1 - n) / 2), and the last step taken though it rounds to n.
    assert desired(closed_loop(damped, load, 16)) == [6, 8, 9, 10, 10, 10, 10, 10, 10, 10, 6, 4, 3, 2, 1, 1]
    undamped = config(initial_replicas=2, max_replicas=20, downscale_delay_s=0)
    assert desired(closed_loop(undamped, load, 12)) == [10] * 10 + [1, 1]


def test_bounds_cap_at_max_replicas_and_hold_at_min_replicas():
    autoscaler = Autoscaler(config(min_replicas=2, max_replicas=5, target_ongoing_requests=1,
                                   downscale_delay_s=0))
    up = autoscaler.observe(MetricsSample(0, spread(50, 3)))
    assert (up.desired, up.reason) == (5, "ongoing requests 16.7/replica over target 1: scale up 2 -> 5 "
                                          "(capped at max_replicas 5)")
    down = autoscaler.observe(MetricsSample(1, spread(0, 5)))
    assert (down.desired, down.reason) == (2, "ongoing requests 0/replica under target 1: scale down 5 -> 2 "
                                              "(held at min_replicas 2)")
    assert autoscaler.observe(MetricsSample(2, spread(0, 2))).reason.endswith("steady at 2 (held at min_replicas 2)")


def test_scale_to_zero_goes_through_one_replica_and_waits_its_own_delay():
    to_zero = config(min_replicas=0, initial_replicas=3, downscale_delay_s=10, downscale_to_zero_delay_s=5)
    decisions = closed_loop(to_zero, lambda t: 0, 25)
    assert desired(decisions) == [3] * 10 + [1] * 6 + [0] * 9
    assert decisions[10].reason == "ongoing requests 0/replica under target 2: scale down 3 -> 1"
    assert decisions[15].reason.endswith("0 wanted, holding 1 for downscale_to_zero_delay_s (4 of 5 s)")
    assert decisions[16].reason.startswith("idle: scale to zero")
    # Without downscale_to_zero_delay_s, 1 -> 0 waits downscale_delay_s.
    assert desired(closed_loop(config(min_replicas=0, initial_replicas=1, downscale_delay_s=10), lambda t: 0,
                               12)) == [1] * 10 + [0] * 2


def test_without_scale_to_zero_an_idle_group_keeps_min_replicas():
    decisions = closed_loop(config(min_replicas=1, initial_replicas=3, downscale_delay_s=10), lambda t: 0, 60)
    assert desired(decisions) == [3] * 10 + [1] * 50


def test_a_request_at_zero_replicas_starts_one_at_once():
    cold = config(min_replicas=0, max_replicas=4, look_back_period_s=30, upscale_delay_s=60)
    autoscaler = Autoscaler(cold)
    assert autoscaler.observe(MetricsSample(0)).desired == 0
    start = autoscaler.observe(MetricsSample(1, num_queued_at_gateway=1))
    assert (start.desired, start.signal) == (1, "cold_start")
    assert start.reason == "cold start: 1 requests waiting at zero replicas, 1 starting"
    # More requests while the replica starts: still the one replica, the rest is the policy's, with its delay.
    assert autoscaler.observe(MetricsSample(2, num_queued_at_gateway=3)).desired == 1
    assert autoscaler.observe(MetricsSample(3, spread(6, 1))).desired == 1
    assert autoscaler.state.pending is not None and autoscaler.state.pending.direction == "up"


def test_kv_usage_over_its_target_scales_up_while_requests_are_under_theirs():
    kv = config(target_kv_cache_usage=0.8)
    decisions = open_loop(kv, 2, lambda t: 2, 3, kv=0.95)
    # 2 x 0.95 of KV in use over 0.8 a replica: 2.375 replicas' worth.
    assert desired(decisions) == [3, 3, 3]
    assert decisions[0].reason == "kv usage 0.95 over target 0.8: scale up 2 -> 3"
    assert decisions[0].signal == "kv_cache_usage"
    assert desired(open_loop(config(), 2, lambda t: 2, 3, kv=0.95)) == [2, 2, 2]


def test_compute_utilization_over_its_target_scales_up_and_a_gpu_counts_over_the_cpu():
    compute = config(target_compute_utilization=0.6)
    decisions = open_loop(compute, 2, lambda t: 2, 3, cpu=0.9)
    assert desired(decisions) == [3, 3, 3]
    assert decisions[0].reason == "compute utilization 0.9 over target 0.6: scale up 2 -> 3"
    assert desired(open_loop(compute, 2, lambda t: 2, 3, cpu=0.9, gpu=0.3)) == [2, 2, 2]
    assert desired(open_loop(config(), 2, lambda t: 2, 3, cpu=0.9)) == [2, 2, 2]


def test_the_largest_ask_wins_and_names_itself():
    both = config(target_kv_cache_usage=0.5, target_compute_utilization=0.5)
    decision = open_loop(both, 2, lambda t: 16, 1, kv=0.6, cpu=0.7)[0]
    assert (decision.desired, decision.signal) == (8, "ongoing_requests")
    decision = open_loop(both, 2, lambda t: 2, 1, kv=0.6, cpu=0.9)[0]
    assert (decision.desired, decision.signal) == (4, "compute_utilization")


def test_the_look_back_window_averages_away_a_spike_shorter_than_itself():
    spike = lambda t: 20 if 40 <= t < 43 or t >= 80 else 2  # noqa: E731
    decisions = open_loop(config(look_back_period_s=30, upscale_delay_s=2), 2, spike, 120)
    # Over 30 s, three seconds of 20 requests among 2s average 3.8: under 2 replicas' worth of target.
    assert desired(decisions[:85]) == [2] * 85
    # Held from t=80 on, the load fills the window: 2.2 replicas' worth at t=83, then 2 s of upscale_delay_s.
    assert decisions[85].reason == "ongoing requests 2.8/replica over target 2: scale up 2 -> 3"
    assert desired(decisions)[-1] == 10
    # A window of one sample sees the spike itself.
    assert desired(open_loop(config(look_back_period_s=1, upscale_delay_s=2), 2, spike, 44))[42] == 10


def test_aggregation_max_keeps_the_spike():
    decisions = open_loop(config(look_back_period_s=30, upscale_delay_s=2, aggregation_function="max"), 2,
                          lambda t: 20 if 40 <= t < 43 else 2, 80)
    assert desired(decisions)[42] == 10
    assert desired(decisions)[-1] == 10  # the spike has left the window, but downscale_delay_s is 600 s


def test_an_external_cap_bounds_the_decision_and_says_so():
    autoscaler = Autoscaler(config(target_ongoing_requests=1, min_replicas=2))
    memory = ReplicaCap(3, "memory: 3 replicas of 2.1 GiB fit in 7 GiB")
    up = autoscaler.observe(MetricsSample(0, spread(8, 2)), cap=memory)
    assert (up.desired, up.reason) == (3, "ongoing requests 4/replica over target 1: scale up 2 -> 3 "
                                          "(capped by memory: 3 replicas of 2.1 GiB fit in 7 GiB)")
    # A cap lowered below the current count applies at once, downscale_delay_s or not, min_replicas or not.
    one = ReplicaCap(1, "cores: 1 replica of 4 cores fits in 6")
    down = autoscaler.observe(MetricsSample(1, spread(8, 3)), cap=one)
    assert (down.desired, down.reason) == (1, "ongoing requests 2.67/replica over target 1: scale down 3 -> 1 "
                                              "(capped by cores: 1 replica of 4 cores fits in 6)")
    assert autoscaler.observe(MetricsSample(2, spread(8, 1))).desired == 8  # lifted; upscale_delay_s is 0


def test_a_cold_start_that_does_not_fit_starts_nothing():
    autoscaler = Autoscaler(config(min_replicas=0))
    decision = autoscaler.observe(MetricsSample(0, num_queued_at_gateway=2), cap=ReplicaCap(0, "memory: 0 fit"))
    assert (decision.desired, decision.signal) == (0, "cold_start")
    assert decision.reason.endswith("0 starting (capped by memory: 0 fit)")


def test_samples_must_come_in_time_order():
    autoscaler = Autoscaler(config())
    autoscaler.observe(MetricsSample(5))
    with pytest.raises(ValueError, match="time order"):
        autoscaler.observe(MetricsSample(4))


@pytest.mark.parametrize("bad", [{"num_running": -1, "num_waiting": 0},
                                 {"num_running": 0, "num_waiting": 0, "kv_cache_usage": 1.5},
                                 {"num_running": 0, "num_waiting": 0, "cpu_utilization": -0.1}])
def test_a_replica_load_out_of_range_is_refused(bad):
    with pytest.raises(ValueError):
        ReplicaLoad(**bad)


def test_a_cold_start_never_asks_for_less_than_the_look_back_window_does():
    # Found by the monotonicity property: the window's earlier load asks for 2; a request arriving at zero
    # replicas must not cut that to the cold start's 1.
    config = AutoscalingConfig(min_replicas=0, max_replicas=2, target_ongoing_requests=0.5, upscale_delay_s=2,
                               downscale_delay_s=0, upscaling_factor=0.3, downscaling_factor=0.3)
    decisions = []
    for queued in (0, 1):
        autoscaler = Autoscaler(config)
        autoscaler.observe(MetricsSample(0.5, (*spread(0, 3), ReplicaLoad(num_running=0, num_waiting=4))))
        decisions.append(autoscaler.observe(MetricsSample(2.5, (), num_queued_at_gateway=queued)))
    assert decisions[1].desired >= decisions[0].desired == 2, decisions
