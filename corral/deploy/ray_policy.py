"""corral's autoscaling policy as a Ray Serve custom policy (Ray 2.52's ``AutoscalingPolicy(policy_function=...)``,
called by the Serve controller about every 0.1 s with an ``AutoscalingContext``).

Each call turns the context into one ``MetricsSample`` (each running replica's latest reported stats, and the
requests that Ray's handles hold for want of a replica) and passes it to ``corral.gateway.autoscale.decide``, the
function that the local backend runs, so a group scales on Ray by the same rules: the look-back window, the
largest of the targets, the factors, the delays in seconds, scale to zero and the cold start. The policy's state
travels in Ray's ``policy_state``. No Ray import: the context is read by its field names."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from corral.deploy.ray_config import (
    STAT_CPU_UTILIZATION,
    STAT_GPU_UTILIZATION,
    STAT_KV_USAGE,
    STAT_RUNNING,
    STAT_TARGET_COMPUTE,
    STAT_TARGET_KV_USAGE,
    STAT_WAITING,
    settings_from_ray,
)
from corral.gateway.autoscale import AutoscalerState, MetricsSample, ReplicaCap, ReplicaLoad, decide

logger = logging.getLogger("ray.serve")  # the controller's log (its file under the session's logs/serve/)

_STATE_KEY = "corral"
_REASON_KEY = "corral_reason"


def corral_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Ray Serve's custom-policy signature: the desired replica count, and the state for the next call."""
    latest = _latest_stats(ctx.raw_metrics)
    settings = settings_from_ray(ctx.config, _target(latest, STAT_TARGET_KV_USAGE),
                                 _target(latest, STAT_TARGET_COMPUTE))
    state: AutoscalerState = ctx.policy_state.get(_STATE_KEY) or AutoscalerState.start(settings)
    if state.target_replicas != ctx.target_num_replicas:  # Ray changed the target (a redeploy, a restart)
        state = dataclasses.replace(state, target_replicas=ctx.target_num_replicas, pending=None)
    sample = MetricsSample(
        time_s=float(ctx.current_time),
        replicas=tuple(_replica_load(latest, replica) for replica in ctx.running_replicas),
        num_queued_at_gateway=math.ceil(ctx.total_queued_requests or 0),
    )
    if not sample.replicas and not sample.num_queued_at_gateway:
        # As Ray's own policy and the local backend: with none running, only a waiting request moves the target;
        # an idle sample would scale down replicas that are merely slow to start before they ever ran.
        reason = f"holding {ctx.target_num_replicas}: no replica running, no request waiting"
        return ctx.target_num_replicas, {**ctx.policy_state, _STATE_KEY: state, _REASON_KEY: reason}
    cap = None
    if ctx.capacity_adjusted_max_replicas < settings.max_replicas:
        cap = ReplicaCap(ctx.capacity_adjusted_max_replicas, "Ray's target capacity")
    decision, state = decide(state, sample, settings, cap)
    if decision.desired != ctx.target_num_replicas:
        logger.info("corral autoscale %s: %s", ctx.deployment_name, decision.reason)
    return decision.desired, {**ctx.policy_state, _STATE_KEY: state, _REASON_KEY: decision.reason}


def _latest_stats(raw_metrics: dict[str, dict[Any, list]]) -> dict[str, dict[Any, float]]:
    """Each stat's newest value per replica (Ray keeps a time series per replica over the look-back window;
    corral's policy keeps its own window of samples)."""
    latest: dict[str, dict[Any, float]] = {}
    for name, per_replica in raw_metrics.items():
        latest[name] = {replica: float(series[-1].value) for replica, series in per_replica.items() if series}
    return latest


def _replica_load(latest: dict[str, dict[Any, float]], replica: Any) -> ReplicaLoad:
    """A replica that has not reported yet has just started: no requests, nothing in use."""
    def stat(name: str) -> float | None:
        return latest.get(name, {}).get(replica)

    cpu, gpu = stat(STAT_CPU_UTILIZATION), stat(STAT_GPU_UTILIZATION)
    return ReplicaLoad(
        num_running=round(stat(STAT_RUNNING) or 0),
        num_waiting=round(stat(STAT_WAITING) or 0),
        kv_cache_usage=min(1.0, max(0.0, stat(STAT_KV_USAGE) or 0.0)),
        cpu_utilization=None if cpu is None else min(1.0, max(0.0, cpu)),
        gpu_utilization=None if gpu is None else min(1.0, max(0.0, gpu)),
    )


def _target(latest: dict[str, dict[Any, float]], name: str) -> float | None:
    values = latest.get(name)
    return next(iter(values.values())) if values else None
