"""What ``corral deploy`` reads: the config's own autoscaling settings, or a separate file, and one-line errors."""

from __future__ import annotations

import pytest

from corral.deploy.k8s import render
from corral.deploy.k8s_common import K8sOptions
from corral.deploy.source import DeployError, load_source

CONFIG = """
groups:
  chat:
    backends:
      - local: ["--model", "/models/chat.gguf"]
    autoscaling: {max_replicas: 5, target_ongoing_requests: 3}
  remote:
    backends:
      - url: http://10.0.0.9:8000
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_settings_come_from_the_group_and_a_file_overrides_them(tmp_path):
    config = write(tmp_path, "gateway.yaml", CONFIG)
    assert load_source(config).autoscaling["chat"].max_replicas == 5
    override = write(tmp_path, "scale.yaml", "chat: {max_replicas: 8, min_replicas: 2}\n")
    settings = load_source(config, override).autoscaling["chat"]
    assert (settings.min_replicas, settings.max_replicas) == (2, 8)


def test_a_group_that_autoscales_without_a_local_backend_is_refused(tmp_path):
    config = write(tmp_path, "gateway.yaml", CONFIG)
    override = write(tmp_path, "scale.yaml", "remote: {max_replicas: 3}\n")
    with pytest.raises(DeployError) as caught:
        render(load_source(config, override), K8sOptions())
    assert str(caught.value) == ("groups.remote.autoscaling: the group has no `local` backend to scale (its url "
                                 "backends are not deployed here)")


@pytest.mark.parametrize(("text", "message"), [
    ("unknown: {max_replicas: 3}\n", "scale.yaml: unknown: no group named 'unknown' in the gateway config"),
    ("chat: {max_replicas: 3, smoothing_factor: 2}\n", "scale.yaml: chat.smoothing_factor: not a setting here"),
    ("chat: {min_replicas: 3}\n", "scale.yaml: chat.max_replicas: required key missing"),
])
def test_a_bad_autoscaling_file_is_one_line_naming_the_key(tmp_path, text, message):
    config = write(tmp_path, "gateway.yaml", CONFIG)
    with pytest.raises(DeployError) as caught:
        load_source(config, write(tmp_path, "scale.yaml", text))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
