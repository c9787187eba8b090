"""A gateway config as Ray Serve deployments (docs/ray.md): what each group's deployment is made of, computed
here without importing Ray so that the mapping is tested in the default run.

A group's ``autoscaling:`` settings become its deployment's ``autoscaling_config`` under the same names, with
corral's own policy (``ray_policy.corral_policy``) as the custom policy: it reads the replicas' reported load
and makes the decision the local backend and the KEDA objects make, delays in seconds included. The two
targets Ray has no field for (KV-cache usage, compute utilization) reach the policy in the replicas' own
stats (``record_autoscaling_stats``), since a policy is given nothing but Ray's config and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.deploy.source import DeployError, DeploySource, local_groups, num_local_backends
from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.config import GroupConfig

POLICY_FUNCTION = "corral.deploy.ray_policy:corral_policy"

# The stats each replica reports (record_autoscaling_stats), read by the policy: its load, and its group's
# targets that have no field in Ray's autoscaling_config (absent when unset).
STAT_RUNNING = "corral_num_running"
STAT_WAITING = "corral_num_waiting"
STAT_KV_USAGE = "corral_kv_cache_usage"
STAT_CPU_UTILIZATION = "corral_cpu_utilization"
STAT_GPU_UTILIZATION = "corral_gpu_utilization"  # reported only by a replica on a GPU that NVML sees
STAT_TARGET_KV_USAGE = "corral_target_kv_cache_usage"
STAT_TARGET_COMPUTE = "corral_target_compute_utilization"

_DEFAULT_MAX_NUM_SEQS = 64  # corral serve's --max-num-seqs


@dataclass(frozen=True)
class RayGroup:
    """One group's Ray Serve application: a deployment of ``corral serve`` replicas at ``/<name>``."""

    name: str
    serve_args: tuple[str, ...]  # corral serve's arguments, the served model name set to the group's
    deployment_options: dict = field(default_factory=dict)  # keyword arguments of serve.deployment
    targets: dict[str, float] = field(default_factory=dict)  # reported by each replica (replica_targets)

    @property
    def num_cpus(self) -> float:
        return self.deployment_options["ray_actor_options"]["num_cpus"]

    @property
    def route_prefix(self) -> str:
        return f"/{self.name}"


@dataclass(frozen=True)
class RayPlan:
    """Every group to run, and a line for each setting that Ray cannot honour exactly."""

    groups: tuple[RayGroup, ...]
    notes: tuple[str, ...] = ()


def plan(source: DeploySource) -> RayPlan:
    """The deployments for a gateway config; DeployError (one line, naming the key) for what cannot run on Ray."""
    groups: list[RayGroup] = []
    notes: list[str] = []
    for name, group, settings, args in local_groups(source):
        _check_name(name)  # the gateway's config refuses --host, --port and --served-model-name in `local:`
        options = deployment_options(name, group, settings, args)
        if settings is None:
            options["num_replicas"] = num_local_backends(group)
        notes.extend(unmapped_notes(name, group))
        groups.append(RayGroup(name, (*args, "--served-model-name", name), options, replica_targets(settings)))
    if not groups:
        raise DeployError("groups: no group has a `local` backend; Ray Serve runs only corral's own replicas")
    return RayPlan(tuple(groups), tuple(notes))


def autoscaling_config(settings: AutoscalingConfig, metrics_interval_s: float = 0.5) -> dict:
    """Ray Serve's ``autoscaling_config`` for a group's settings: the same names, with corral's policy.
    ``metrics_interval_s`` (the group's ``health.metrics_interval_s``): how often replicas and handles push their
    load to the controller. Ray 2.52 marks the field deprecated in favour of environment variables that it does
    not read yet; its default of 10 s would make a delay of a few seconds meaningless."""
    config: dict = {
        "metrics_interval_s": metrics_interval_s,
        "min_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas,
        "target_ongoing_requests": settings.target_ongoing_requests,
        "look_back_period_s": settings.look_back_period_s,
        "aggregation_function": settings.aggregation_function,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s,
        "upscaling_factor": settings.upscaling_factor,
        "downscaling_factor": settings.downscaling_factor,
        "policy": {"policy_function": POLICY_FUNCTION},
    }
    if settings.initial_replicas is not None:
        config["initial_replicas"] = settings.initial_replicas
    if settings.downscale_to_zero_delay_s is not None:
        config["downscale_to_zero_delay_s"] = settings.downscale_to_zero_delay_s
    return config


def settings_from_ray(config: Any, target_kv_cache_usage: float | None = None,
                      target_compute_utilization: float | None = None) -> AutoscalingConfig:
    """corral's settings back from a deployment's Ray ``AutoscalingConfig`` (what a custom policy is given) and
    the two targets that the replicas report: the inverse of ``autoscaling_config``."""
    aggregation = config.aggregation_function
    return AutoscalingConfig(
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        initial_replicas=config.initial_replicas,
        target_ongoing_requests=config.target_ongoing_requests,
        target_kv_cache_usage=target_kv_cache_usage,
        target_compute_utilization=target_compute_utilization,
        look_back_period_s=config.look_back_period_s,
        aggregation_function=getattr(aggregation, "value", aggregation),
        upscale_delay_s=config.upscale_delay_s,
        downscale_delay_s=config.downscale_delay_s,
        downscale_to_zero_delay_s=config.downscale_to_zero_delay_s,
        upscaling_factor=config.upscaling_factor or 1.0,
        downscaling_factor=config.downscaling_factor or 1.0,
    )


def deployment_options(name: str, group: GroupConfig, settings: AutoscalingConfig | None,
                       args: list[str]) -> dict:
    """``serve.deployment``'s options for a group: its replicas' cores, how long a replica taken away drains,
    its health checks, and as many requests at once as its engine batches (Ray's default is 5)."""
    options: dict = {
        "name": name,
        "ray_actor_options": {"num_cpus": group.replicas.cores_per_replica},
        "max_ongoing_requests": max_num_seqs(args),
        # A replica taken away gets no new requests and waits this long for those in flight (the drain).
        "graceful_shutdown_timeout_s": group.replicas.drain_timeout_s,
        "health_check_period_s": group.health.interval_s,
        "health_check_timeout_s": group.health.timeout_s,
    }
    if settings is not None:
        options["autoscaling_config"] = autoscaling_config(settings, group.health.metrics_interval_s)
    return options


def replica_targets(settings: AutoscalingConfig | None) -> dict[str, float]:
    """The targets a replica reports in its stats, for the policy (those set only)."""
    if settings is None:
        return {}
    targets = {STAT_TARGET_KV_USAGE: settings.target_kv_cache_usage,
               STAT_TARGET_COMPUTE: settings.target_compute_utilization}
    return {key: value for key, value in targets.items() if value is not None}


# Settings of the gateway's own replica supervisor that Ray Serve does its own way.
_UNMAPPED_REPLICA_SETTINGS = ("startup_timeout_s", "backoff_initial_s", "backoff_max_s", "stop_timeout_s",
                              "reserve_memory_bytes")


def unmapped_notes(name: str, group: GroupConfig) -> list[str]:
    """A line for each setting given in the group that Ray Serve does not take (the gateway's supervisor's)."""
    notes = [f"groups.{name}.replicas.{key}: not used on Ray Serve, which starts, restarts and places replicas "
             "itself" for key in _UNMAPPED_REPLICA_SETTINGS if key in group.replicas.model_fields_set]
    if "unhealthy_after" in group.health.model_fields_set:
        notes.append(f"groups.{name}.health.unhealthy_after: not used on Ray Serve, which replaces a replica after "
                     "its own count of failed checks")
    return notes


def max_num_seqs(args: list[str]) -> int:
    """The ``--max-num-seqs`` among corral serve's arguments (its default when absent)."""
    for index, arg in enumerate(args):
        if arg == "--max-num-seqs" and index + 1 < len(args):
            return _positive(args[index + 1])
        if arg.startswith("--max-num-seqs="):
            return _positive(arg.partition("=")[2])
    return _DEFAULT_MAX_NUM_SEQS


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DeployError(f"--max-num-seqs: expected a positive integer, got {text!r}")
    return value


def _check_name(name: str) -> None:
    # The group's name is its application's name and route prefix (/<name>/v1/...).
    if not name or "/" in name or name != name.strip():
        raise DeployError(f"groups.{name}: a Ray Serve route prefix cannot be made from this name; rename it")
