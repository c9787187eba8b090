"""``corral deploy ray`` on a real local Ray cluster bound to 127.0.0.1 (``make test-ray``; the default run
deselects the ``ray`` marker): a group of the tiny random-weight model grows from 1 to 2 Ray Serve replicas under a
burst and shrinks back to 1 when it ends, every request through the official ``openai`` client (streamed and not)
gets its whole answer, and stopping leaves no Ray process behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from corral.deploy.ray_config import autoscaling_config, plan
from corral.deploy.ray_policy import corral_policy
from corral.deploy.source import load_source
from corral.gateway.autoscale import AutoscalingConfig
from tests.conftest import free_port

pytestmark = pytest.mark.ray

NUM_TOKENS = 48
SETTINGS = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "look_back_period_s": 2,
            "upscale_delay_s": 1, "downscale_delay_s": 6}


def ray_processes() -> dict[int, str]:
    """pid -> command line of every Ray process on this host: its daemons (gcs_server, raylet, the agents and
    monitors, all run from Ray's package) and its workers, whose title is ``ray::<actor>``."""
    found = {}
    package = os.path.dirname(__import__("ray").__file__)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if argv.startswith("ray::") or package in argv or "gcs_server" in argv or "raylet" in argv:
            found[int(entry.name)] = argv
    return found


def rss_bytes(pids) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def check_answer(client, stream: bool) -> str | None:
    """None when the request got its whole answer (every token, finished by length), else what was wrong."""
    try:
        if not stream:
            answer = client.completions.create(model="tiny", prompt="The river", max_tokens=NUM_TOKENS,
                                               temperature=0, extra_body={"ignore_eos": True})
            choice = answer.choices[0]
            ok = (choice.finish_reason == "length" and answer.usage.completion_tokens == NUM_TOKENS
                  and isinstance(choice.text, str) and choice.text)
            return None if ok else f"incomplete: {answer}"
        chunks = list(client.completions.create(model="tiny", prompt="The river", max_tokens=NUM_TOKENS,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True},
                                                stream_options={"include_usage": True}))
    except Exception as error:  # any failure is what the test counts
        return f"{type(error).__name__}: {error}"
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage if chunks else None
    ok = finished == ["length"] and usage is not None and usage.completion_tokens == NUM_TOKENS
    return None if ok else f"incomplete stream: {chunks[-2:]}"


class Load:
    """``num_loops`` threads sending one request after another (streamed and not, in turn) until stopped."""

    def __init__(self, base_url: str, num_loops: int):
        import openai

        self.client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        self.problems: list[str | None] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(num_loops)]
        for thread in self.threads:
            thread.start()

    def _loop(self, index: int) -> None:
        stream = index % 2 == 0
        while not self.stopped.is_set():
            self.problems.append(check_answer(self.client, stream))
            stream = not stream

    def stop(self) -> list[str | None]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=120)
        return self.problems


def replica_states(group: str) -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications[group].deployments[group].replica_states)


def wait_for(condition, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (replicas: {replica_states('tiny')})")


def test_policy_reads_rays_own_context_and_config():
    """Ray's AutoscalingConfig takes the mapped settings, and the policy reads its real AutoscalingContext."""
    from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig
    from ray.serve.config import AutoscalingContext

    settings = AutoscalingConfig(max_replicas=3, upscale_delay_s=0, upscaling_factor=0.5)
    ray_config = RayAutoscalingConfig(**autoscaling_config(settings))
    assert ray_config.policy.policy_function == "corral.deploy.ray_policy:corral_policy"
    series = [dataclasses.make_dataclass("TimeStampedValue", ["timestamp", "value"])(0.0, 8.0)]
    context = AutoscalingContext(
        deployment_id=None, deployment_name="tiny", app_name="tiny", current_num_replicas=1, target_num_replicas=1,
        running_replicas=["r0"], total_num_requests=8, total_queued_requests=0, total_running_requests=8,
        aggregated_metrics={}, raw_metrics={"corral_num_running": {"r0": series}}, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=3, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=100.0, config=ray_config)
    desired, state = corral_policy(context)
    assert desired == 3  # 8 ongoing at target 2 asks for 4: half the gap of 3 rounds up to 3
    assert "scale up 1 -> 3" in state["corral_reason"]


def test_group_scales_up_and_down_on_a_local_cluster_without_a_failed_request(tiny_model_dir, tmp_path):
    from corral.deploy.ray_serve import RayOptions, start

    before = set(ray_processes())
    args = ["--model", tiny_model_dir, "--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2)]
    config = {"groups": {"tiny": {"backends": [{"local": args}], "autoscaling": SETTINGS,
                                  "replicas": {"drain_timeout_s": 30}}}}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    ray_plan = plan(load_source(tmp_path / "gateway.yaml"))
    started = time.monotonic()
    running = start(ray_plan, RayOptions(port=free_port(), num_cpus=2, log_to_driver=False))
    try:
        start_s = time.monotonic() - started
        base_url = running.url(ray_plan.groups[0])
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/tiny")
        assert replica_states("tiny") == {"RUNNING": 1}
        cluster = {pid: argv for pid, argv in ray_processes().items() if pid not in before}
        assert any("gcs_server" in argv for argv in cluster.values()), cluster

        burst = Load(base_url, num_loops=6)  # 6 ongoing at a target of 2 asks for 3, capped at 2
        up_s = wait_for(lambda: replica_states("tiny").get("RUNNING") == 2, 120, "scale up to 2 replicas")
        cluster = {pid: argv for pid, argv in ray_processes().items() if pid not in before}
        replicas = [pid for pid, argv in cluster.items() if argv.startswith("ray::ServeReplica")]
        cluster_rss, replica_rss = rss_bytes(cluster), rss_bytes(replicas)
        time.sleep(3)  # the second replica serves part of the burst
        trickle = Load(base_url, num_loops=1)  # in flight while a replica drains
        burst_problems = burst.stop()
        down_s = wait_for(lambda: replica_states("tiny") == {"RUNNING": 1}, 120, "scale down to 1 replica")
        trickle_problems = trickle.stop()
        print(f"\nray: started in {start_s:.1f} s; scale-up {up_s:.1f} s from the burst; scale-down {down_s:.1f} s "
              f"after it; RSS of the cluster's processes {cluster_rss / 2**30:.2f} GiB, of which the 2 replicas "
              f"{replica_rss / 2**30:.2f} GiB; {len(burst_problems) + len(trickle_problems)} requests")
        assert len(replicas) == 2
        assert burst_problems and trickle_problems
        assert [p for p in burst_problems + trickle_problems if p is not None] == []
    finally:
        running.stop()
    deadline = time.monotonic() + 30
    while (left := {pid: a for pid, a in ray_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, f"Ray processes left after ray.shutdown(): {left}"


def test_cli_serves_behind_a_gateway_and_stops_on_sigterm(tiny_model_dir, tmp_path):
    """``corral deploy ray`` as a user runs it: it prints the group's URL, a gateway with that URL as a `url`
    backend serves through it (streamed and not, through the openai client), and SIGTERM stops it all."""
    import openai

    before = set(ray_processes())
    args = ["--model", tiny_model_dir, "--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2)]
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump({"groups": {"tiny": {"backends": [{"local": args}]}}}))
    port = free_port()
    deploy = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "deploy", "ray", "--config",
                               str(tmp_path / "ray.yaml"), "--port", str(port), "--num-cpus", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gateway = None
    watchdog = threading.Timer(300, deploy.kill)  # a command that never prints its URL fails the test, not hangs it
    watchdog.start()
    try:
        # Ray's workers' log lines share stdout; the command prints "<group>: <url>" once the group serves.
        line = next((line for line in deploy.stdout if line.startswith("tiny: ")), "")
        assert line == f"tiny: http://127.0.0.1:{port}/tiny\n", deploy.stderr.read()
        gateway_config = {"groups": {"tiny": {"backends": [{"url": line.split()[1], "scrape_metrics": False}]}}}
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(gateway_config))
        gateway_port = free_port()
        gateway = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "gateway", "--config",
                                    str(tmp_path / "gateway.yaml"), "--port", str(gateway_port), "--log-level",
                                    "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base_url = f"http://127.0.0.1:{gateway_port}"
        wait_for_http(base_url + "/health", 60)
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert check_answer(client, stream=False) is None
        assert check_answer(client, stream=True) is None
        chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=8, stream=True, extra_body={"ignore_eos": True}))
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        deploy.send_signal(signal.SIGTERM)
        returncode = deploy.wait(timeout=120)
        watchdog.cancel()
    assert returncode == 0, deploy.stderr.read()
    assert "corral deploy ray: stopping" in deploy.stderr.read()
    deadline = time.monotonic() + 30
    while (left := {pid: a for pid, a in ray_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, f"Ray processes left after corral deploy ray stopped: {left}"


def wait_for_http(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")
