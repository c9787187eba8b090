"""corral's policy as Ray Serve's custom policy, called as the Serve controller calls it (a context each 0.1 s,
the returned state passed back), without Ray: the context is a stand-in with the fields of Ray 2.52's
``AutoscalingContext`` that the policy reads (tests/deploy/test_ray_serve.py passes it a real one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from corral.deploy.ray_config import (
    STAT_CPU_UTILIZATION,
    STAT_GPU_UTILIZATION,
    STAT_KV_USAGE,
    STAT_RUNNING,
    STAT_TARGET_COMPUTE,
    STAT_TARGET_KV_USAGE,
    STAT_WAITING,
    autoscaling_config,
)
from corral.deploy.ray_policy import corral_policy
from corral.gateway.autoscale import AutoscalingConfig

SETTINGS = AutoscalingConfig(max_replicas=4, target_ongoing_requests=2, look_back_period_s=1, upscale_delay_s=1,
                             downscale_delay_s=3)


@dataclass
class Context:
    config: Any
    current_time: float
    running_replicas: list[str]
    target_num_replicas: int
    raw_metrics: dict = field(default_factory=dict)
    total_queued_requests: float = 0.0
    capacity_adjusted_max_replicas: int = 4
    policy_state: dict = field(default_factory=dict)
    deployment_name: str = "tiny"


def ray_config(settings: AutoscalingConfig) -> SimpleNamespace:
    config = {k: v for k, v in autoscaling_config(settings).items() if k != "policy"}
    return SimpleNamespace(**{"initial_replicas": None, "downscale_to_zero_delay_s": None, **config})


def series(value: float) -> list:
    return [SimpleNamespace(timestamp=0.0, value=value)]


class Controller:
    """Calls the policy every 0.1 s as Ray's controller does, starting ``running`` replicas at once when the
    target rises (and stopping them when it falls)."""

    def __init__(self, settings: AutoscalingConfig = SETTINGS, replicas: int = 1):
        self.config = ray_config(settings)
        self.time_s = 0.0
        self.target = replicas
        self.running = [f"r{i}" for i in range(replicas)]
        self.state: dict = {}

    def run(self, seconds: float, running: float, waiting: float = 0, queued: float = 0, kv: float = 0.0,
            kv_target: float | None = None, capacity: int = 4, **more: float) -> int:
        for _ in range(round(seconds / 0.1)):
            stats = {STAT_RUNNING: running, STAT_WAITING: waiting, STAT_KV_USAGE: kv, **more}
            if kv_target is not None:
                stats[STAT_TARGET_KV_USAGE] = kv_target
            raw = {name: {r: series(value) for r in self.running} for name, value in stats.items()}
            context = Context(self.config, self.time_s, list(self.running), self.target, raw, queued, capacity,
                              self.state)
            self.target, self.state = corral_policy(context)
            self.running = [f"r{i}" for i in range(self.target)]
            self.time_s += 0.1
        return self.target


def test_a_burst_scales_up_after_the_upscale_delay_and_down_after_the_downscale_delay():
    controller = Controller()
    assert controller.run(0.9, running=6) == 1  # 6 ongoing at target 2 asks for 3, held for upscale_delay_s
    assert controller.run(0.3, running=6) == 3
    assert "scale up 1 -> 3" in controller.state["corral_reason"]
    assert controller.run(2.9, running=0) == 3  # idle, but downscale_delay_s has not passed
    assert controller.run(1.5, running=0) == 1  # plus the look-back window of busy samples


def test_requests_queued_at_rays_handles_count_as_ongoing():
    controller = Controller()
    assert controller.run(1.5, running=2, queued=4) == 3


def test_kv_cache_target_reported_by_the_replicas_is_a_signal():
    controller = Controller()
    assert controller.run(1.5, running=1, kv=0.95, kv_target=0.5) == 2  # 0.95 / 0.5 -> 2 replicas
    assert "kv usage" in controller.state["corral_reason"]
    assert Controller().run(1.5, running=1, kv=0.95) == 1  # no target reported: ongoing requests only


def test_a_compute_target_reads_a_replicas_gpu_where_it_reports_one_else_its_cpu():
    busy_gpu = {STAT_TARGET_COMPUTE: 0.5, STAT_CPU_UTILIZATION: 0.1, STAT_GPU_UTILIZATION: 1.0}
    controller = Controller()
    assert controller.run(1.5, running=1, **busy_gpu) == 2  # the GPU at 1.0 over 0.5; the CPU would ask for 1
    assert "compute utilization" in controller.state["corral_reason"]
    cpu_only = {STAT_TARGET_COMPUTE: 0.5, STAT_CPU_UTILIZATION: 1.0}
    assert Controller().run(1.5, running=1, **cpu_only) == 2


def test_cold_start_at_zero_replicas_asks_for_one_at_once_and_an_idle_start_is_held():
    # No downscale delay: only the hold keeps a replica that is still starting.
    settings = AutoscalingConfig(min_replicas=0, max_replicas=4, look_back_period_s=1, upscale_delay_s=30,
                                 downscale_delay_s=0)
    controller = Controller(settings, replicas=0)
    assert controller.run(0.1, running=0, queued=3) == 1
    assert "cold start" in controller.state["corral_reason"]
    controller.running = []  # the replica is still starting: no stats, nothing queued any more
    context = Context(controller.config, 5.0, [], 1, {}, 0.0, 4, controller.state)
    assert corral_policy(context)[0] == 1


def test_rays_capacity_caps_the_decision():
    assert Controller().run(1.5, running=20, capacity=2) == 2


def test_a_target_changed_by_ray_is_taken_as_the_current_one():
    controller = Controller()
    controller.run(0.5, running=2)
    controller.target = 3  # e.g. a redeploy with initial_replicas 3
    assert controller.run(0.1, running=2) == 3  # 6 ongoing at target 2: steady at 3, no stale count of 1
