"""Recommendations: ranked by cost, every one within the SLOs, the binding constraint right in constructed
cases, rejections counted by reason, JSON shape, and well under a second."""

from __future__ import annotations

import json
import time

import pytest

from corral.cli.main import main
from corral.errors import ConfigError
from corral.planner.plan import PlanRequest
from corral.planner.recommend import recommend

TRAFFIC = PlanRequest(model="llama-3.1-8b", requests_per_s=20, prompt_len="500:1500", output_len="250",
                      slo_ttft_ms=500, slo_tpot_ms=40)


@pytest.fixture(scope="module")
def recs():
    return recommend(TRAFFIC, calibration=None)


def test_sorted_by_cost_and_every_one_meets_the_slos(recs):
    costs = [r.cost_per_million_output_all_in for r in recs.accepted]
    assert len(costs) > 10 and costs == sorted(costs)
    for r in recs.accepted:
        best = r.plan.best
        assert best.ttft_s <= 0.5 and best.tpot_s <= 0.04 and r.plan.traffic_plan.replicas >= 1
    hardware = {r.candidate.hardware for r in recs.accepted}
    assert {"h100-sxm", "mi300x"} <= hardware and not any(h.startswith("cpu-") for h in hardware)


def test_rejections_are_counted_by_reason(recs):
    counts = recs.rejection_counts
    assert sum(counts.values()) == len(recs.rejected)
    assert counts["tpot_slo"] > 0 and counts["unsupported"] > 0  # the CPU rows and l4 are too slow; TP on CPUs
    cpu = [r for r in recs.rejected if r.candidate.hardware.startswith("cpu-")]
    assert cpu and {r.reason for r in cpu} <= {"tpot_slo", "ttft_slo", "memory", "unsupported"}


def test_memory_rejects_what_does_not_fit():
    recs = recommend(PlanRequest(model="llama-3.1-70b", hardware="l4", format="bf16", kv_dtype="bf16"), None, 1)
    assert not recs.accepted and recs.rejection_counts == {"memory": 1}
    assert "exceed the usable" in recs.rejected[0].detail


@pytest.mark.parametrize("request_, binding, roofline", [
    # a small KV pool caps the batch before the SLOs or the scheduler do
    (PlanRequest(model="llama-3.1-8b", hardware="h100", format="bf16", kv_dtype="bf16", kv_cache_memory=2 * 2**30,
                 slo_tpot_ms=1000, slo_ttft_ms=10_000), "memory", "bandwidth"),
    # a tiny model on a big GPU: the scheduler's 256 sequences come first
    (PlanRequest(model="qwen2.5-0.5b", hardware="h100", format="bf16", kv_dtype="bf16", slo_tpot_ms=1000,
                 slo_ttft_ms=10_000), "max_num_seqs", None),
    # the CPU row: each step is compute-bound long before memory binds, and TPOT reaches its SLO
    (PlanRequest(hardware="local", format="file", slo_tpot_ms=60, slo_ttft_ms=100_000), "tpot_slo", "compute"),
    # one 70B step reads 70 GB: a TPOT SLO just above that binds while still bandwidth-bound
    (PlanRequest(model="llama-3.1-70b", hardware="h200", format="fp8", kv_dtype="fp8", slo_tpot_ms=26,
                 slo_ttft_ms=100_000), "tpot_slo", "bandwidth"),
    # long prompts in 2,048-token chunks: past 49 sequences a prompt takes 5 chunks, not 4, and TTFT binds
    (PlanRequest(model="llama-3.1-8b", hardware="h100", format="fp8", kv_dtype="fp8", prompt_len="8000",
                 output_len="2000", max_num_batched_tokens=2048, slo_ttft_ms=140, slo_tpot_ms=1000), "ttft_slo", None),
])
def test_the_binding_constraint_in_constructed_cases(request_, binding, roofline):
    recs = recommend(request_, None, 1)
    assert len(recs.accepted) == 1, recs.rejected
    r = recs.accepted[0]
    assert r.binding == binding, r.explanation
    if roofline is not None:
        assert r.roofline == roofline, r.explanation


def test_json_shape_through_the_cli(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CORRAL_CALIBRATION", str(tmp_path / "none.json"))
    monkeypatch.setenv("COLUMNS", "200")  # rich truncates headers at 80 columns without a terminal
    assert main(["plan", "--recommend", "--model", "llama-3.1-8b", "--rps", "5", "--slo-tpot-ms", "40",
                 "--json", "--top", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["recommendations"]) == 3 and data["num_accepted"] >= 3
    row = data["recommendations"][0]
    for key in ("hardware", "format", "tensor_parallel_size", "kv_dtype", "replicas", "slo_batch", "ttft_s",
                "tpot_s", "cost_per_million_output_all_in", "cost_per_million_input", "cost_per_million_output",
                "binding", "roofline", "explanation"):
        assert key in row, key
    assert set(data["rejected"]) == {"counts", "examples"} and data["rejected"]["counts"]
    assert main(["plan", "--recommend", "--model", "llama-3.1-8b", "--hardware", "l4", "--slo-tpot-ms", "40",
                 "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "binding" in out and "rejected:" in out and "1. " in out


def test_refusals():
    with pytest.raises(ConfigError, match="--replicas does not apply"):
        recommend(PlanRequest(replicas=2), None)
    with pytest.raises(ConfigError, match="--price-per-hour with recommendations needs one --hardware"):
        recommend(PlanRequest(price_per_hour=1.0), None)
    with pytest.raises(ConfigError, match="--tp must be at least 1"):
        recommend(PlanRequest(), None, 0)


def test_well_under_a_second():
    timings = []
    for _ in range(3):  # the best of three: other processes share this machine
        start = time.perf_counter()
        recommend(TRAFFIC, None)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings
