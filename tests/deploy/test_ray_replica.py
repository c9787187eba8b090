"""A Ray Serve replica's body without Ray: built from a group's ``corral serve`` arguments it is corral serve's own
app (the builder that serve.ingress calls hands it over), and it reports its load and its group's targets."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from corral.deploy.ray_config import (
    STAT_CPU_UTILIZATION,
    STAT_KV_USAGE,
    STAT_RUNNING,
    STAT_TARGET_KV_USAGE,
    STAT_WAITING,
)
from corral.deploy.ray_replica import AutoscaledReplica, CorralReplica, parse_serve_args, replica_app
from corral.deploy.source import DeployError


async def post_and_scrape(app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 5,
                                                               "ignore_eos": True})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 5
        assert "corral:num_requests_running" in (await client.get("/metrics")).text


def test_replica_serves_corral_serve_routes_and_reports_its_load(tiny_model_dir):
    args = ["--model", tiny_model_dir, "--quantization", "none", "--max-model-len", "256",
            "--kv-cache-memory", str(8 * 1024**2),
            "--served-model-name", "tiny"]
    replica = AutoscaledReplica(args, {STAT_TARGET_KV_USAGE: 0.8}, num_cpus=1)
    try:
        replica.check_health()
        asyncio.run(post_and_scrape(replica_app()))
        stats = replica.record_autoscaling_stats()
        assert stats[STAT_RUNNING] == 0 and stats[STAT_WAITING] == 0  # the request has finished
        assert stats[STAT_KV_USAGE] >= 0 and 0 <= stats[STAT_CPU_UTILIZATION] <= 1
        assert stats[STAT_TARGET_KV_USAGE] == 0.8
        assert all(isinstance(value, float) for value in stats.values())  # Ray refuses any other type
    finally:
        replica.engine.shutdown()
    with pytest.raises(RuntimeError, match="the engine loop is not running"):
        replica.check_health()


def test_a_fixed_size_groups_replica_reports_no_stats():
    # Ray 2.52 fails to start a replica with record_autoscaling_stats in a deployment without autoscaling.
    assert not hasattr(CorralReplica, "record_autoscaling_stats")


def test_bad_serve_arguments_are_one_line():
    with pytest.raises(DeployError, match="^corral serve arguments: argument --max-num-seqs: invalid int value"):
        parse_serve_args(["--max-num-seqs", "many"])
