"""AutoscalingConfig: Ray Serve's names and defaults where Ray has them, every key known, every bound checked,
and each refusal one line naming the key (as the gateway's config loader reports it)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.gateway.autoscale import AutoscalingConfig
from corral.gateway.config import describe


def refusal(**settings) -> str:
    with pytest.raises(ValidationError) as error:
        AutoscalingConfig.model_validate(settings)
    line = describe(error.value)
    assert "\n" not in line
    return line


def test_defaults_are_ray_serves():
    config = AutoscalingConfig(max_replicas=4)
    assert (config.min_replicas, config.start_replicas, config.target_ongoing_requests) == (1, 1, 2.0)
    assert (config.upscale_delay_s, config.downscale_delay_s, config.to_zero_delay_s) == (30.0, 600.0, 600.0)
    assert (config.look_back_period_s, config.aggregation_function) == (30.0, "mean")
    assert (config.upscaling_factor, config.downscaling_factor) == (1.0, 1.0)
    assert config.target_kv_cache_usage is None and config.target_compute_utilization is None
    assert not config.scale_to_zero
    zero = AutoscalingConfig(min_replicas=0, max_replicas=2, initial_replicas=1, downscale_to_zero_delay_s=60)
    assert zero.scale_to_zero and (zero.start_replicas, zero.to_zero_delay_s) == (1, 60.0)


def test_unknown_and_missing_keys_are_named():
    assert refusal(max_replicas=4, upscale_dealy_s=3) == "upscale_dealy_s: unknown key"
    assert refusal(min_replicas=1) == "max_replicas: required key missing"


def test_rays_old_names_point_to_the_current_ones():
    assert refusal(max_replicas=4, upscale_smoothing_factor=0.5) == (
        "upscale_smoothing_factor: not a setting here; use upscaling_factor (Ray Serve's current name)")
    assert "use target_ongoing_requests" in refusal(max_replicas=4, target_num_ongoing_requests_per_replica=1)


@pytest.mark.parametrize(("settings", "message"), [
    ({"min_replicas": 5, "max_replicas": 4}, "min_replicas: 5 is over max_replicas 4"),
    ({"min_replicas": 1, "max_replicas": 4, "initial_replicas": 0},
     "initial_replicas: 0 is outside [min_replicas 1, max_replicas 4]"),
    ({"max_replicas": 4, "initial_replicas": 5}, "initial_replicas: 5 is outside [min_replicas 1, max_replicas 4]"),
    ({"max_replicas": 4, "downscale_to_zero_delay_s": 5}, "downscale_to_zero_delay_s: min_replicas is 1"),
    ({"max_replicas": 0}, "max_replicas: Input should be greater than or equal to 1"),
    ({"max_replicas": 4, "min_replicas": -1}, "min_replicas: Input should be greater than or equal to 0"),
    ({"max_replicas": 4, "target_ongoing_requests": 0}, "target_ongoing_requests: Input should be greater than 0"),
    ({"max_replicas": 4, "target_kv_cache_usage": 1.2}, "target_kv_cache_usage: Input should be less than or equal"),
    ({"max_replicas": 4, "target_compute_utilization": 0}, "target_compute_utilization: Input should be greater"),
    ({"max_replicas": 4, "upscale_delay_s": -1}, "upscale_delay_s: Input should be greater than or equal to 0"),
    ({"max_replicas": 4, "look_back_period_s": 0}, "look_back_period_s: Input should be greater than 0"),
    ({"max_replicas": 4, "downscaling_factor": 0}, "downscaling_factor: Input should be greater than 0"),
    ({"max_replicas": 4, "aggregation_function": "median"}, "aggregation_function: Input should be 'mean', 'max'"),
])
def test_bad_values_are_refused_naming_the_key(settings, message):
    assert message in refusal(**settings)


def test_the_config_is_frozen():
    config = AutoscalingConfig(max_replicas=4)
    with pytest.raises(ValidationError):
        config.max_replicas = 8
