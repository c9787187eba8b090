"""The autoscaling policy (docs/autoscaling.md): from a group's load to the number of replicas it should have.

Pure: ``decide`` takes the state and the newest sample and returns the decision and the next state, with no
clock and no IO, so each rule is tested on recorded sequences. ``Autoscaler`` holds the state for a caller that
samples on a timer. One decision, in Ray Serve's order:

1. cold start: no healthy replica and a request waiting -> one replica, at once;
2. each signal asks for its total over the look-back window divided by its per-replica target; the largest ask wins;
3. the step from the current count toward it is scaled by upscaling_factor or downscaling_factor;
4. bounds: [min_replicas, max_replicas], and an external cap (what the host's resources fit);
5. delays: a change is made once it has been asked for at every sample over upscale_delay_s (downscale_delay_s;
   downscale_to_zero_delay_s for 1 -> 0); a group reaches zero from one replica only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.autoscale.load import Demand, MetricsSample, aggregate, within_look_back

Direction = Literal["up", "down"]
Signal = Literal["cold_start", "ongoing_requests", "kv_cache_usage", "compute_utilization"]


@dataclass(frozen=True)
class ReplicaCap:
    """A ceiling from outside the policy, such as the local backend's resource guard; ``reason`` says what
    bounds it (``"memory: 3 replicas of 2.1 GiB fit in 7.0 GiB"``). It may be under min_replicas: what does not
    fit cannot be started."""

    max_replicas: int
    reason: str

    def __post_init__(self) -> None:
        if self.max_replicas < 0:
            raise ValueError(f"a replica cap must be >= 0, got {self.max_replicas}")


@dataclass(frozen=True)
class PendingChange:
    """A change asked for at every sample since ``since_s``, not yet made because its delay has not passed."""

    direction: Direction
    since_s: float


@dataclass(frozen=True)
class AutoscalerState:
    """What one decision leaves for the next: the count decided, the samples still in the look-back window,
    and the change waiting out its delay."""

    target_replicas: int
    window: tuple[MetricsSample, ...] = ()
    pending: PendingChange | None = None

    @classmethod
    def start(cls, config: AutoscalingConfig) -> AutoscalerState:
        return cls(target_replicas=config.start_replicas)


@dataclass(frozen=True)
class ScalingDecision:
    """How many replicas the group should have now, and why (the signal that drove it, any bound or delay)."""

    desired: int
    reason: str
    signal: Signal


@dataclass(frozen=True)
class _Ask:
    signal: Signal
    num_replicas: float  # unrounded
    text: str


def decide(state: AutoscalerState, sample: MetricsSample, config: AutoscalingConfig,
           cap: ReplicaCap | None = None) -> tuple[ScalingDecision, AutoscalerState]:
    """The decision on ``sample``, the newest of a group's samples, and the state to pass with the next one."""
    if state.window and sample.time_s < state.window[-1].time_s:
        raise ValueError(f"samples must come in time order: {sample.time_s} after {state.window[-1].time_s}")
    window = within_look_back((*state.window, sample), sample.time_s, config.look_back_period_s)
    ceiling, capped = _ceiling(config, cap)
    regular = _regular(state, sample, window, config, ceiling, capped)
    if sample.num_healthy_replicas == 0 and sample.num_ongoing > 0:
        cold = _cold_start(state, sample, window, ceiling, capped)
        # The look-back window may already ask for more than the one replica a cold start brings.
        return regular if regular[0].desired > cold[0].desired else cold
    return regular


def _regular(state: AutoscalerState, sample: MetricsSample, window: tuple[MetricsSample, ...],
             config: AutoscalingConfig, ceiling: int, capped: str) -> tuple[ScalingDecision, AutoscalerState]:
    ask = max(_asks(aggregate(window, config.aggregation_function), sample.num_healthy_replicas, config),
              key=lambda a: a.num_replicas)  # the first of equal asks: ongoing requests
    stepped = _stepped(ask.num_replicas, sample.num_healthy_replicas, config)
    bounded, bound_note = _bounded(stepped, config.min_replicas, ceiling, capped)
    desired, pending, hold_note = _after_delay(bounded, state, sample.time_s, config)
    if desired > ceiling:  # a cap lowered from outside applies at once: those replicas cannot run
        desired, bound_note = ceiling, capped
    decision = ScalingDecision(desired, _reason(ask, state.target_replicas, desired, bound_note, hold_note),
                               ask.signal)
    return decision, AutoscalerState(desired, window, pending)


class Autoscaler:
    """``decide`` with its state held: pass each new sample to ``observe`` and act on the decision."""

    def __init__(self, config: AutoscalingConfig):
        self.config = config
        self.state = AutoscalerState.start(config)

    @property
    def desired(self) -> int:
        return self.state.target_replicas

    def observe(self, sample: MetricsSample, cap: ReplicaCap | None = None) -> ScalingDecision:
        decision, self.state = decide(self.state, sample, self.config, cap)
        return decision


def _ceiling(config: AutoscalingConfig, cap: ReplicaCap | None) -> tuple[int, str]:
    if cap is not None and cap.max_replicas < config.max_replicas:
        return cap.max_replicas, f"capped by {cap.reason}"
    return config.max_replicas, f"capped at max_replicas {config.max_replicas}"


def _cold_start(state: AutoscalerState, sample: MetricsSample, window: tuple[MetricsSample, ...], ceiling: int,
                capped: str) -> tuple[ScalingDecision, AutoscalerState]:
    # Replicas already starting count: a second request at zero replicas must not start a second one.
    desired = min(max(1, state.target_replicas), ceiling)
    reason = f"cold start: {sample.num_ongoing} requests waiting at zero replicas, {desired} starting"
    if desired < max(1, state.target_replicas):
        reason += f" ({capped})"
    return ScalingDecision(desired, reason, "cold_start"), AutoscalerState(desired, window, None)


def _asks(demand: Demand, num_replicas: int, config: AutoscalingConfig) -> list[_Ask]:
    """What each configured signal asks for: its total over its per-replica target (Ray's
    ``current * ratio``, which is the same number whatever the current count)."""
    asks = [_ask("ongoing_requests", "ongoing requests", demand.num_ongoing, config.target_ongoing_requests,
                 num_replicas, per_replica="/replica")]
    if config.target_kv_cache_usage is not None:
        asks.append(_ask("kv_cache_usage", "kv usage", demand.kv_cache_usage, config.target_kv_cache_usage,
                         num_replicas))
    if config.target_compute_utilization is not None and demand.compute_utilization is not None:
        asks.append(_ask("compute_utilization", "compute utilization", demand.compute_utilization,
                         config.target_compute_utilization, num_replicas))
    return asks


def _ask(signal: Signal, label: str, total: float, target: float, num_replicas: int, per_replica: str = "") -> _Ask:
    if num_replicas == 0:
        return _Ask(signal, total / target, f"{label} {total:.3g} at zero replicas")
    value = total / num_replicas
    relation = "over" if value > target else "under" if value < target else "at"
    return _Ask(signal, total / target, f"{label} {value:.3g}{per_replica} {relation} target {target:g}")


def _stepped(wanted: float, current: int, config: AutoscalingConfig) -> int:
    """Ray's factors: a decision closes ``factor`` of the gap between the current count and the wanted one."""
    wanted = round(wanted, 9)  # 2.4 / 0.8 is 3.0000000000000004: float noise must not add a replica
    gap = wanted - current
    factor = config.upscaling_factor if gap > 0 else config.downscaling_factor
    stepped = math.ceil(round(current + factor * gap, 9))
    # Rounding up would otherwise hold a small downscaling_factor one replica above the wanted count for ever.
    if math.ceil(wanted) < current and stepped == current:
        stepped -= 1
    return stepped


def _bounded(stepped: int, min_replicas: int, ceiling: int, capped: str) -> tuple[int, str]:
    if stepped > ceiling:
        return ceiling, capped
    if stepped < min_replicas:
        return (min_replicas, f"held at min_replicas {min_replicas}") if min_replicas <= ceiling else (ceiling, capped)
    return stepped, ""


def _after_delay(wanted: int, state: AutoscalerState, now_s: float, config: AutoscalingConfig
                 ) -> tuple[int, PendingChange | None, str]:
    """The count to have now: ``wanted`` once it has been asked for long enough, else the current target."""
    target = state.target_replicas
    if wanted == target:
        return target, None, ""
    if wanted > target:
        direction, delay_s, delay_name = "up", config.upscale_delay_s, "upscale_delay_s"
    elif target > 1:
        wanted = max(1, wanted)  # zero is reached from one replica only, after its own delay
        direction, delay_s, delay_name = "down", config.downscale_delay_s, "downscale_delay_s"
    else:
        delay_name = "downscale_delay_s" if config.downscale_to_zero_delay_s is None else "downscale_to_zero_delay_s"
        direction, delay_s = "down", config.to_zero_delay_s
    pending = state.pending
    if pending is None or pending.direction != direction:
        pending = PendingChange(direction, now_s)
    waited_s = now_s - pending.since_s
    if waited_s >= delay_s:
        return wanted, None, ""
    return target, pending, f"{wanted} wanted, holding {target} for {delay_name} ({waited_s:g} of {delay_s:g} s)"


def _reason(ask: _Ask, before: int, after: int, bound_note: str, hold_note: str) -> str:
    if after == 0 and before > 0 and ask.num_replicas == 0:
        text = f"idle: scale to zero ({ask.text})"
    elif after != before:
        text = f"{ask.text}: scale {'up' if after > before else 'down'} {before} -> {after}"
    elif hold_note:
        text = f"{ask.text}: {hold_note}"
    else:
        text = f"{ask.text}: steady at {after}"
    return f"{text} ({bound_note})" if bound_note else text
