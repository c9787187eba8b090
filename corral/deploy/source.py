"""What ``corral deploy`` reads: the gateway's config and each group's ``autoscaling:`` settings.

The settings come from the group's own ``autoscaling:`` key (parsed by the gateway's config when it knows the
key, else read here from the raw YAML), and may be given or overridden per group by a separate file
(``--autoscaling FILE``: a mapping of group name to settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.errors import CorralError
from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.config import GatewayConfig, parse_config, read_yaml
from corral.gateway.config_errors import describe


class DeployError(CorralError):
    """The config cannot be turned into manifests (one line, naming the key at fault)."""


@dataclass(frozen=True)
class DeploySource:
    """The validated gateway config and, per group that autoscales, its settings."""

    config: GatewayConfig
    autoscaling: dict[str, AutoscalingConfig]


def load_source(config_path: str | Path, autoscaling_path: str | Path | None = None) -> DeploySource:
    """Reads ``gateway.yaml`` (and an optional autoscaling file); DeployError with one line when either is bad."""
    name = Path(config_path).name
    data = read_yaml(config_path)
    if not isinstance(data, dict):
        raise DeployError(f"{name}: expected a mapping with a `groups` key, got {type(data).__name__}")
    config = parse_config(data, name)
    settings = {group_name: group.autoscaling for group_name, group in config.groups.items()
                if group.autoscaling is not None}
    if autoscaling_path is not None:
        settings.update(_override_file(autoscaling_path, config))
    return DeploySource(config, settings)


def _settings(value: Any, where: str) -> AutoscalingConfig:
    if not isinstance(value, dict):
        raise DeployError(f"{where}: expected a mapping of settings, got {type(value).__name__}")
    try:
        return AutoscalingConfig.model_validate(value)
    except ValidationError as error:
        raise DeployError(f"{where}.{describe(error)}") from None


def _override_file(path: str | Path, config: GatewayConfig) -> dict[str, AutoscalingConfig]:
    name = Path(path).name
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise DeployError(f"{name}: expected a mapping of group name to autoscaling settings")
    for group in data:
        if group not in config.groups:
            raise DeployError(f"{name}: {group}: no group named {group!r} in the gateway config")
    return {group: _settings(value, f"{name}: {group}") for group, value in data.items()}
