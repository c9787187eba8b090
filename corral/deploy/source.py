"""What ``corral deploy`` reads: the gateway's config and each group's ``autoscaling:`` settings.

The settings come from the group's own ``autoscaling:`` key (parsed by the gateway's config when it knows the
key, else read here from the raw YAML), and may be given or overridden per group by a separate file
(``--autoscaling FILE``: a mapping of group name to settings)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.errors import CorralError
from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.config import GatewayConfig, GroupConfig, parse_config, read_yaml
from corral.gateway.config_errors import describe


class DeployError(CorralError):
    """The config cannot be turned into manifests (one line, naming the key at fault)."""


@dataclass(frozen=True)
class DeploySource:
    """The validated gateway config and, per group that autoscales, its settings."""

    config: GatewayConfig
    autoscaling: dict[str, AutoscalingConfig]


def local_groups(source: DeploySource) -> Iterator[tuple[str, GroupConfig, AutoscalingConfig | None, list[str]]]:
    """The groups that run corral's own replicas: name, config, autoscaling settings (None: a fixed number) and
    the ``corral serve`` arguments. A group of url backends is skipped (its servers run elsewhere), unless it
    asks to autoscale: DeployError."""
    for name, group in source.config.groups.items():
        settings = source.autoscaling.get(name)
        args = local_args(name, group)
        if args is None:
            if settings is not None:
                raise DeployError(f"groups.{name}.autoscaling: the group has no `local` backend to scale "
                                  "(its url backends are not deployed here)")
            continue
        yield name, group, settings, args


def local_args(group_name: str, group: GroupConfig) -> list[str] | None:
    """The ``corral serve`` arguments of the group's local backends (one Deployment runs one set of them), or
    None when the group has none."""
    locals_ = [(index, backend.local) for index, backend in enumerate(group.backends) if backend.local is not None]
    if not locals_:
        return None
    first_index, first = locals_[0]
    for index, args in locals_[1:]:
        if args != first:
            raise DeployError(f"groups.{group_name}.backends.{index}.local: differs from backends.{first_index}.local;"
                              " one Deployment runs one set of `corral serve` arguments (split the group)")
    return list(first)


def num_local_backends(group: GroupConfig) -> int:
    return sum(backend.local is not None for backend in group.backends)



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
