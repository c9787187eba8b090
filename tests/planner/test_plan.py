"""Whole plans: the default model on this machine, GPU plans with parallelism and traffic, and every
choice a plan cannot honour refused with a one-line error that names its flag."""

from __future__ import annotations

import math

import pytest

from corral.errors import ConfigError
from corral.planner.hardware import local_cpu_name
from corral.planner.plan import PlanRequest, build_plan


def test_the_default_plan_is_the_default_model_on_this_machine():
    plan = build_plan(PlanRequest())
    assert plan.model.name.endswith(".gguf") and plan.hardware.name == local_cpu_name()
    assert plan.weight_format.name == "file" and plan.memory.kv_dtype == "int8"  # corral serve's own choices
    assert plan.memory.weight.total == 96_576_768 and plan.memory.kv_bytes_per_token == 12_240
    assert plan.memory.context_len == 4096 and plan.memory.block_size == 4
    assert plan.best is not None and plan.cost is not None and plan.capacity_requests_per_s > 0
    assert [p.batch for p in plan.points] == [1, 2, 4, 8, 16, 32, 64]


def test_the_engines_kv_budget_is_honoured():
    plan = build_plan(PlanRequest(kv_cache_memory=512 * 1024**2))
    assert plan.memory.num_blocks == 512 * 1024**2 // (12_240 * 4) == 10_965
    assert plan.memory.max_seqs_at_context == 10_965 // 1024 == 10
    assert any("--kv-cache-memory sets the KV pool" in note for note in plan.notes)


def test_vllms_budget_is_memory_times_utilization_less_weights_activations_and_overhead():
    plan = build_plan(PlanRequest(model="llama-3.1-8b", hardware="h100-sxm", format="bf16", memory_utilization=0.9))
    m = plan.memory
    assert m.usable_bytes == int(80 * 2**30 * 0.9)
    assert m.kv_budget_bytes == m.usable_bytes - m.weight.per_device - m.activation_peak_bytes - m.overhead_bytes
    assert m.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072  # bf16, GQA: 8 KV heads, not 32
    assert m.weight.total == 8_030_261_248 * 2
    assert math.isclose(m.vllm_max_concurrency, m.num_blocks * 4 / 4096)


def test_tensor_parallelism_splits_weights_and_kv_heads():
    one = build_plan(PlanRequest(model="llama-3.1-70b", hardware="h100", format="fp8", tensor_parallel_size=1))
    four = build_plan(PlanRequest(model="llama-3.1-70b", hardware="h100", format="fp8", tensor_parallel_size=4))
    assert four.memory.weight.per_device == one.memory.weight.total // 4
    assert four.memory.kv_bytes_per_token * 4 == one.memory.kv_bytes_per_token
    # 8 KV heads over 16 ranks: each rank keeps a whole head
    sixteen = build_plan(PlanRequest(model="llama-3.1-70b", hardware="h100", format="fp8", tensor_parallel_size=16))
    assert sixteen.memory.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2


def test_traffic_sets_the_replicas_and_the_fleet_cost():
    plan = build_plan(PlanRequest(model="llama-3.1-8b", hardware="l40s", format="fp8", requests_per_s=30,
                                  prompt_len="1000:3000", output_len="200"))
    r, best = plan.traffic_plan, plan.best
    assert math.isclose(r.requests_in_flight, 30 * best.request_latency_s)
    assert r.replicas == r.replicas_needed == math.ceil(r.requests_in_flight / (best.batch * 0.8))
    assert plan.cost.fleet_per_hour == pytest.approx(r.replicas * plan.hardware.price_per_hour)
    fixed = build_plan(PlanRequest(model="llama-3.1-8b", hardware="l40s", format="fp8", requests_per_s=30,
                                   prompt_len="1000:3000", output_len="200", replicas=2))
    assert fixed.traffic_plan.replicas == 2 and fixed.traffic_plan.replicas_needed == r.replicas_needed
    assert fixed.capacity_requests_per_s == pytest.approx(2 * best.batch * 0.8 / best.request_latency_s)


def test_the_longest_lengths_bound_the_batch_by_memory():
    plan = build_plan(PlanRequest(kv_cache_memory=64 * 1024**2, prompt_len="100:900", output_len="100"))
    # 1,370 blocks of 4; a sequence may hold 1,000 tokens = 250 blocks
    assert plan.max_batch == 1370 // 250 == 5


def test_overrides_replace_the_table_and_defaults():
    plan = build_plan(PlanRequest(price_per_hour=1.0, bandwidth_efficiency=0.3, compute_efficiency=0.9))
    assert plan.hardware.price_per_hour == 1.0 and plan.hardware.price_source == "given with --price-per-hour"
    assert (plan.efficiency.bandwidth, plan.efficiency.compute) == (0.3, 0.9)


def test_a_model_too_big_for_the_device_says_so():
    plan = build_plan(PlanRequest(model="llama-3.1-70b", hardware="l4", format="bf16"))
    assert plan.memory.num_blocks == 0 and plan.best is None and plan.points == []
    assert any("the weights alone" in note and "--tp" in note for note in plan.notes)


@pytest.mark.parametrize("request_, message", [
    (PlanRequest(hardware="tpu"), "unknown --hardware 'tpu'"),
    (PlanRequest(format="fp8"), "no fp8 throughput"),
    (PlanRequest(format="file", model="llama-3.2-1b"), "--format file needs a GGUF model file"),
    (PlanRequest(group_size=64), "--group-size applies to --format int4"),
    (PlanRequest(kv_dtype="fp4"), "--kv-dtype"),
    (PlanRequest(context_len=100_000), "--context 100000 exceeds"),
    (PlanRequest(tensor_parallel_size=2), "--tp/--pp above 1 need GPUs"),
    (PlanRequest(model="llama-3.1-8b", hardware="h100", tensor_parallel_size=3), "--tp 3 does not divide"),
    (PlanRequest(model="qwen2.5-7b", hardware="h100", tensor_parallel_size=7), "neither divides"),
    (PlanRequest(replicas=0), "--replicas"),
    (PlanRequest(block_size=3), "--block-size"),
    (PlanRequest(memory_utilization=1.5), "--memory-utilization"),
    (PlanRequest(kv_cache_memory=0), "--kv-cache-memory"),
    (PlanRequest(kv_cache_memory=2**30, overhead_bytes=0), "--memory-utilization and --overhead-bytes do not apply"),
    (PlanRequest(max_num_seqs=0), "--max-num-seqs"),
    (PlanRequest(max_num_batched_tokens=0), "--max-num-batched-tokens"),
    (PlanRequest(price_per_hour=-1), "--price-per-hour"),
    (PlanRequest(bandwidth_efficiency=2), "efficiency"),
])
def test_what_cannot_be_planned_is_refused_naming_the_flag(request_, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_plan(request_)


def test_a_gguf_file_corral_cannot_load_is_flagged(tmp_path):
    import torch
    from gguf import GGMLQuantizationType

    from corral.loader.gguf_writer import write_tiny_gguf
    from corral.loader.names import expected_shapes
    from corral.models.spec import ModelConfig

    config = ModelConfig(architecture="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    weights = {name: torch.zeros(shape) for name, shape in expected_shapes(config).items()}
    write_tiny_gguf(tmp_path / "q5.gguf", config, weights, GGMLQuantizationType.Q5_0)
    plan = build_plan(PlanRequest(model=str(tmp_path / "q5.gguf")))
    assert any("corral cannot load Q5_0" in note for note in plan.notes)
    assert any("are held as Q8_0" in note for note in plan.notes)
    gpu = build_plan(PlanRequest(model=str(tmp_path / "q5.gguf"), hardware="l4"))
    assert gpu.memory.weight.total < plan.memory.weight.total  # as stored: 22 bytes a block, not Q8_0's 34
