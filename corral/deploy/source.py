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
from corral.gateway.config import GatewayConfig, GroupConfig, parse_config
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
    data = _read_yaml(config_path)
    if not isinstance(data, dict):
        raise DeployError(f"{name}: expected a mapping with a `groups` key, got {type(data).__name__}")
    raw_settings = _pop_autoscaling(data)
    config = parse_config(data, name)
    settings = {group: _settings(value, f"{name}: groups.{group}.autoscaling") for group, value in
                raw_settings.items()}
    for group_name, group in config.groups.items():
        parsed = getattr(group, "autoscaling", None)  # set when the gateway's config knows the key
        if isinstance(parsed, AutoscalingConfig):
            settings[group_name] = parsed
    if autoscaling_path is not None:
        settings.update(_override_file(autoscaling_path, config))
    return DeploySource(config, settings)


def _read_yaml(path: str | Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise DeployError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        raise DeployError(f"{Path(path).name}: {line}not valid YAML: {getattr(error, 'problem', error)}") from None


def _pop_autoscaling(data: dict) -> dict[str, Any]:
    """Takes each group's ``autoscaling`` out of the raw data while the gateway's config does not know the key
    (it forbids unknown keys); leaves it in place once it does."""
    if "autoscaling" in GroupConfig.model_fields:
        return {}
    groups = data.get("groups")
    if not isinstance(groups, dict):
        return {}
    return {name: group.pop("autoscaling") for name, group in groups.items()
            if isinstance(group, dict) and "autoscaling" in group}


def _settings(value: Any, where: str) -> AutoscalingConfig:
    if not isinstance(value, dict):
        raise DeployError(f"{where}: expected a mapping of settings, got {type(value).__name__}")
    try:
        return AutoscalingConfig.model_validate(value)
    except ValidationError as error:
        raise DeployError(f"{where}.{describe(error)}") from None


def _override_file(path: str | Path, config: GatewayConfig) -> dict[str, AutoscalingConfig]:
    name = Path(path).name
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise DeployError(f"{name}: expected a mapping of group name to autoscaling settings")
    for group in data:
        if group not in config.groups:
            raise DeployError(f"{name}: {group}: no group named {group!r} in the gateway config")
    return {group: _settings(value, f"{name}: {group}") for group, value in data.items()}
