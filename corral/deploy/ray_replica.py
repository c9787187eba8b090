"""One Ray Serve replica of a model group: ``corral serve``'s own FastAPI app around its own engine, built from the
group's ``local:`` arguments inside a Ray worker, so the OpenAI routes, SSE streaming, /health and /metrics are
exactly those of ``corral serve``. It reports its load to the Serve controller (``record_autoscaling_stats``), which
hands it to corral's policy (ray_policy.py). No Ray import: ray_serve.py wraps the class with ``serve.ingress`` and
``serve.deployment``.

This is the one module of corral.deploy that runs the engine (pyproject's import contracts say so): it is code
for a Ray worker, not for the machine that writes manifests."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from corral.deploy.ray_config import (
    STAT_CPU_UTILIZATION,
    STAT_GPU_UTILIZATION,
    STAT_KV_USAGE,
    STAT_RUNNING,
    STAT_TARGET_COMPUTE,
    STAT_WAITING,
)
from corral.deploy.source import DeployError
from corral.gateway.autoscale.gpu import GpuUtilization
from corral.gateway.autoscale.resources import process_tree

# serve.ingress calls its app builder with no arguments, right after the replica's constructor, in the replica's
# own process (one Ray actor per replica): the constructor leaves the app it built here for the builder.
_BUILT_APPS: list[Any] = []


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise DeployError(f"corral serve arguments: {message}")


def parse_serve_args(serve_args: list[str]) -> argparse.Namespace:
    """``corral serve``'s arguments parsed by its own parser; DeployError (one line) when they are bad."""
    from corral.cli.serve import add_arguments

    parser = _Parser(prog="corral serve", add_help=False)
    add_arguments(parser)
    return parser.parse_args(serve_args)


def replica_app() -> Any:
    """serve.ingress's app builder: the app this process's replica has just built."""
    return _BUILT_APPS.pop()


class CorralReplica:
    """A replica: the engine loads in the constructor, so Ray counts it running only once it can serve.
    ``targets``: the group's targets that Ray's config has no field for, reported for the policy;
    ``num_cpus``: the cores Ray gives it, over which its CPU time is a utilization. A group of a fixed size
    runs this class; an autoscaled one ``AutoscaledReplica``, which reports its load."""

    def __init__(self, serve_args: list[str], targets: dict[str, float], num_cpus: float):
        from corral.cli.serve import build_server

        app, self.engine, self.metrics = build_server(parse_serve_args(serve_args))
        _BUILT_APPS.append(app)
        self.targets = dict(targets)
        self.gpu = GpuUtilization() if targets.get(STAT_TARGET_COMPUTE) is not None else None
        self.num_cpus = num_cpus
        self._cpu_mark = (time.monotonic(), time.process_time())

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose engine loop died is replaced."""
        if not self.engine.is_healthy():
            raise RuntimeError("the engine loop is not running")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class AutoscaledReplica(CorralReplica):
    """A replica of an autoscaled group. Ray 2.52 fails to start a replica that defines
    ``record_autoscaling_stats`` in a deployment without ``autoscaling_config``, hence two classes."""

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve calls this on each replica (every RAY_SERVE_REPLICA_AUTOSCALING_METRIC_RECORD_INTERVAL_S) and
        pushes the values to the controller, where the custom policy reads them."""
        registry = self.metrics.registry
        stats = {
            STAT_RUNNING: registry.get_sample_value("corral:num_requests_running") or 0.0,
            STAT_WAITING: float(self.engine.num_waiting),
            STAT_KV_USAGE: registry.get_sample_value("corral:kv_cache_usage_perc") or 0.0,
            STAT_CPU_UTILIZATION: self._cpu_utilization(),
            **self.targets,
        }
        if self.gpu is not None:  # a compute target: the GPUs this worker runs on, where NVML sees any
            gpu = self.gpu.read(process_tree(os.getpid()))
            if gpu is not None:
                stats[STAT_GPU_UTILIZATION] = gpu
        return stats

    def _cpu_utilization(self) -> float:
        """This process's CPU time (every thread: the engine's and its OpenMP team) since the last call, over
        the wall time and the cores given to it."""
        now, cpu = time.monotonic(), time.process_time()
        (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        if now <= then:
            return 0.0
        return min(1.0, (cpu - cpu_then) / (now - then) / self.num_cpus)
