"""Runs a ``RayPlan`` (ray_config.py) on a Ray cluster: starts a local one bound to 127.0.0.1, or joins one at an
address; starts Serve's HTTP proxy; and runs each group as an application of one deployment at ``/<group>``.
Ray is imported here only inside functions: ``corral --help`` and the default tests never load it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from corral.deploy.ray_config import RayGroup, RayPlan
from corral.deploy.ray_replica import AutoscaledReplica, CorralReplica, replica_app
from corral.deploy.source import DeployError

LOCAL_NODE_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class RayOptions:
    """Where to run: ``address`` of a cluster to join (None: start a local one of ``num_cpus`` cores, all when
    None), and where Serve's HTTP proxy listens."""

    address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    num_cpus: int | None = None
    log_to_driver: bool = True


@dataclass
class RunningApps:
    """The groups running on the cluster; ``stop`` removes them and leaves the cluster (a local one ends)."""

    plan: RayPlan
    options: RayOptions

    def url(self, group: RayGroup) -> str:
        """The group's base URL, as a gateway's `url` backend takes it (without /v1)."""
        host = "127.0.0.1" if self.options.host in ("0.0.0.0", "::") else self.options.host
        return f"http://{host}:{self.options.port}{group.route_prefix}"

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if self.options.address is None:
                serve.shutdown()
            else:  # a shared cluster keeps Serve and its other applications
                for group in self.plan.groups:
                    serve.delete(group.name)
        finally:
            ray.shutdown()


def start(plan: RayPlan, options: RayOptions) -> RunningApps:
    """Starts or joins the cluster and runs every group; returns once each group's replicas serve."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise DeployError("Ray Serve is not installed: pip install 'corral[ray]'") from None
    if options.address is None:
        ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False,
                 log_to_driver=options.log_to_driver, _node_ip_address=LOCAL_NODE_ADDRESS)
    else:
        ray.init(address=options.address, log_to_driver=options.log_to_driver)
    running = RunningApps(plan, options)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": options.port})
        for group in plan.groups:
            try:
                serve.run(_application(group), name=group.name, route_prefix=group.route_prefix)
            except RuntimeError as error:  # Ray gave up on the replicas; its log holds each one's traceback
                first_line = str(error).strip().splitlines()[0]
                raise DeployError(f"groups.{group.name}: Ray Serve could not start its replicas ({first_line}); "
                                  "the replicas' logs are under the Ray session's logs/serve/") from None
    except BaseException:
        running.stop()
        raise
    return running


def _application(group: RayGroup):
    from ray import serve

    autoscaled = "autoscaling_config" in group.deployment_options
    ingress = serve.ingress(replica_app)(AutoscaledReplica if autoscaled else CorralReplica)
    with warnings.catch_warnings():
        # metrics_interval_s is "deprecated" for environment variables that Ray 2.52 does not read yet
        # (ray_config.autoscaling_config): it is the only way to set how often the load is pushed.
        warnings.filterwarnings("ignore", message=".*metrics_interval_s.*", category=DeprecationWarning)
        deployment = serve.deployment(ingress, **group.deployment_options)
    return deployment.bind(list(group.serve_args), group.targets, group.num_cpus)
