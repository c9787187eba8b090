"""``corral deploy ray``'s mapping from a gateway config to Ray Serve deployments, without Ray: each autoscaling
setting under Ray's name, the inverse the policy reads back, the replicas' options, and what is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from corral.cli.main import main
from corral.deploy.ray_config import (
    POLICY_FUNCTION,
    STAT_TARGET_COMPUTE,
    STAT_TARGET_KV_USAGE,
    autoscaling_config,
    max_num_seqs,
    plan,
    settings_from_ray,
)
from corral.deploy.source import DeployError, load_source
from corral.gateway.autoscale import AutoscalingConfig

ARGS = ["--model", "/models/smol.gguf", "--max-num-seqs", "16"]


def source(tmp_path, groups: dict):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return load_source(path)


def test_every_setting_maps_to_rays_name_and_back():
    settings = AutoscalingConfig(min_replicas=0, max_replicas=5, initial_replicas=2, target_ongoing_requests=3,
                                 target_kv_cache_usage=0.8, target_compute_utilization=0.7, look_back_period_s=7,
                                 aggregation_function="max", upscale_delay_s=4, downscale_delay_s=50,
                                 downscale_to_zero_delay_s=90, upscaling_factor=0.5, downscaling_factor=0.25)
    config = autoscaling_config(settings, metrics_interval_s=0.25)
    assert config == {
        "metrics_interval_s": 0.25, "min_replicas": 0, "max_replicas": 5, "initial_replicas": 2, "target_ongoing_requests": 3.0,
        "look_back_period_s": 7.0, "aggregation_function": "max", "upscale_delay_s": 4.0,
        "downscale_delay_s": 50.0, "downscale_to_zero_delay_s": 90.0, "upscaling_factor": 0.5,
        "downscaling_factor": 0.25, "policy": {"policy_function": POLICY_FUNCTION},
    }
    # What a custom policy is given is Ray's config (attributes) plus the targets the replicas report.
    ray_config = SimpleNamespace(**{k: v for k, v in config.items() if k != "policy"})
    assert settings_from_ray(ray_config, 0.8, 0.7) == settings


def test_unset_optional_settings_are_left_to_ray_and_read_back_as_unset():
    settings = AutoscalingConfig(max_replicas=3)
    config = autoscaling_config(settings)
    assert "initial_replicas" not in config and "downscale_to_zero_delay_s" not in config
    ray_config = SimpleNamespace(**config, initial_replicas=None, downscale_to_zero_delay_s=None)
    assert settings_from_ray(ray_config) == settings


def test_plan_gives_each_local_group_a_deployment_at_its_own_route(tmp_path):
    ray_plan = plan(source(tmp_path, {
        "chat": {"backends": [{"local": ARGS}],
                 "autoscaling": {"max_replicas": 4, "target_kv_cache_usage": 0.9},
                 "replicas": {"cores_per_replica": 2, "drain_timeout_s": 30},
                 "health": {"interval_s": 5, "timeout_s": 3, "metrics_interval_s": 1}},
        "fixed": {"backends": [{"local": ARGS}, {"local": ARGS}]},
        "remote": {"backends": [{"url": "http://10.0.0.1:8000"}]},
    }))
    chat, fixed = ray_plan.groups
    assert [chat.name, fixed.name] == ["chat", "fixed"]  # the url-only group is not deployed here
    assert chat.route_prefix == "/chat"
    assert chat.serve_args == (*ARGS, "--served-model-name", "chat")
    options = chat.deployment_options
    assert options["ray_actor_options"] == {"num_cpus": 2}
    assert options["max_ongoing_requests"] == 16  # the engine's batch, not Ray's default of 5
    assert options["graceful_shutdown_timeout_s"] == 30
    assert (options["health_check_period_s"], options["health_check_timeout_s"]) == (5, 3)
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in options
    assert chat.targets == {STAT_TARGET_KV_USAGE: 0.9}
    assert fixed.deployment_options["num_replicas"] == 2 and "autoscaling_config" not in fixed.deployment_options
    assert fixed.targets == {}
    # How often the replicas push their load: the group's own metrics interval (Ray's default is 10 s).
    assert options["autoscaling_config"]["metrics_interval_s"] == 1


def test_compute_target_reaches_the_replicas(tmp_path):
    ray_plan = plan(source(tmp_path, {"chat": {"backends": [{"local": ARGS}],
                                               "autoscaling": {"max_replicas": 2, "target_compute_utilization": 0.6}}}))
    assert ray_plan.groups[0].targets == {STAT_TARGET_COMPUTE: 0.6}
    assert ray_plan.notes == ()  # measured as the local backend measures it (GPU where NVML sees one, else CPU)


def test_supervisor_settings_ray_does_its_own_way_are_stated(tmp_path):
    ray_plan = plan(source(tmp_path, {"chat": {"backends": [{"local": ARGS}],
                                               "replicas": {"startup_timeout_s": 60, "cores_per_replica": 2},
                                               "health": {"unhealthy_after": 4}}}))
    assert ray_plan.notes == (
        "groups.chat.replicas.startup_timeout_s: not used on Ray Serve, which starts, restarts and places "
        "replicas itself",
        "groups.chat.health.unhealthy_after: not used on Ray Serve, which replaces a replica after its own count "
        "of failed checks",
    )


@pytest.mark.parametrize(("groups", "error"), [
    ({"g": {"backends": [{"url": "http://x:1"}]}}, "groups: no group has a `local` backend"),
    ({"a/b": {"backends": [{"local": ARGS}]}}, "groups.a/b: a Ray Serve route prefix cannot be made"),
    ({"g": {"backends": [{"local": ["--model", "a"]}, {"local": ["--model", "b"]}]}},
     "groups.g.backends.1.local: differs from backends.0.local"),
    ({"g": {"backends": [{"local": ["--max-num-seqs", "0"]}]}}, "--max-num-seqs: expected a positive integer"),
])
def test_what_ray_cannot_run_is_refused_with_one_line(tmp_path, groups, error):
    with pytest.raises(DeployError, match="^" + error.replace(".", r"\.")):
        plan(source(tmp_path, groups))


def test_autoscaling_of_a_group_without_local_backend_is_refused(tmp_path):
    (tmp_path / "scaling.yaml").write_text(yaml.safe_dump({"remote": {"max_replicas": 2}}))
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"groups": {
        "local": {"backends": [{"local": ARGS}]}, "remote": {"backends": [{"url": "http://x:1"}]}}}))
    with pytest.raises(DeployError, match=r"^groups\.remote\.autoscaling: the group has no `local` backend"):
        plan(load_source(tmp_path / "gateway.yaml", tmp_path / "scaling.yaml"))


def test_max_num_seqs_is_read_in_both_spellings():
    assert max_num_seqs(["--max-num-seqs=8"]) == 8
    assert max_num_seqs(["--model", "m"]) == 64


def test_cli_refuses_before_starting_ray(tmp_path, capsys):
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"groups": {"g": {"backends": [
        {"local": ["--model", "m", "--no-such-flag"]}]}}}))
    assert main(["deploy", "ray", "--config", str(tmp_path / "gateway.yaml"), "--num-cpus", "2"]) == 1
    assert capsys.readouterr().err == ("corral deploy: error: corral serve arguments: unrecognized arguments: "
                                       "--no-such-flag\n")
    assert main(["deploy", "ray", "--config", str(tmp_path / "gateway.yaml"), "--address", "ray://h:10001",
                 "--num-cpus", "2"]) == 1
    assert "--num-cpus: sizes a local cluster only" in capsys.readouterr().err
