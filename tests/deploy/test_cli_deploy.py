"""``corral deploy k8s`` end to end, in a subprocess as a user runs it: files written, errors on one line,
and torch never imported."""

from __future__ import annotations

import subprocess
import sys

import yaml

from corral.cli.main import main
from tests.deploy.k8s_schemas import validation_errors

CONFIG = """
groups:
  chat:
    backends:
      - local: ["--model", "/models/chat.gguf"]
    autoscaling: {min_replicas: 0, max_replicas: 4}
"""


def corral(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from corral.cli.main import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'corral deploy imported torch'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_deploy_k8s_writes_valid_files(tmp_path):
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    out = tmp_path / "manifests"
    done = corral("deploy", "k8s", "--config", str(tmp_path / "gateway.yaml"), "--out", str(out),
                  "--namespace", "llm", "--image", "corral:test", "--prometheus-url", "http://prom:9090")
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in out.iterdir()) == ["corral-chat.yaml", "corral-gateway.yaml"]
    assert done.stdout.split() == [str(out / "corral-chat.yaml"), str(out / "corral-gateway.yaml")]
    objects = [obj for path in sorted(out.iterdir()) for obj in yaml.safe_load_all(path.read_text())]
    assert all(validation_errors(obj) == [] for obj in objects)
    scaler = next(obj for obj in objects if obj["kind"] == "ScaledObject")
    assert scaler["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom:9090"


def test_deploy_k8s_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    (tmp_path / "gateway.yaml").write_text(CONFIG.replace("max_replicas: 4", "max_replica: 4"))
    assert main(["deploy", "k8s", "--config", str(tmp_path / "gateway.yaml"), "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("corral deploy: error: gateway.yaml: groups.chat.autoscaling.max_replica: unknown key")
    assert not (tmp_path / "out").exists()
