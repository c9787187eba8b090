"""The roofline: FLOPs and bytes of a step by hand, the slower side wins, MoE experts read by expectation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from corral.errors import ConfigError
from corral.planner.models import BUILTIN_MODELS, ModelShape
from corral.planner.roofline import DEFAULT_EFFICIENCY, Efficiency, StepModel, StepWork, combine, decode_work

SHAPE = ModelShape(name="t", vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
EFF = Efficiency(0.5, 0.25, "test", "test")


def steps(model: ModelShape = SHAPE, weights: int = 1000, experts: int = 0, tp: int = 1) -> StepModel:
    return StepModel(model, weights, experts, kv_bytes_per_token=10, bandwidth_bytes_per_s=100.0, peak_flops=1000.0,
                     efficiency=EFF, tensor_parallel_size=tp)


def test_flops_of_a_step_by_hand():
    # per layer: q 8x8, k 4x8, v 4x8, o 8x8, gate/up/down 3 x 8x16 = 576 weights; 2 layers
    assert SHAPE.matmul_parameters_per_token() == 1152
    work = StepWork(num_tokens=3, num_logit_rows=2, attention_pairs=5, kv_tokens_read=7)
    expected = 2 * 1152 * 3 + 2 * 100 * 8 * 2 + 4 * 2 * 2 * 4 * 5
    assert steps().flops(work) == expected
    assert steps(tp=2).flops(work) == expected / 2
    assert steps().compute_seconds(work) == expected / (1000 * 0.25)


def test_bytes_of_a_step_are_weights_once_plus_kv_read_and_written():
    work = decode_work(4, 10)
    assert (work.num_tokens, work.num_logit_rows, work.attention_pairs, work.kv_tokens_read) == (4, 4, 40, 40)
    assert steps().bytes_moved(work) == 1000 + 10 * (40 + 4)
    assert steps().memory_seconds(work) == (1000 + 440) / (100 * 0.5)


def test_the_slower_side_sets_the_time():
    small, big = decode_work(1, 1), decode_work(1000, 1)
    s = steps()
    assert s.seconds(small) == s.memory_seconds(small) > s.compute_seconds(small)
    assert s.seconds(big) == s.compute_seconds(big) > s.memory_seconds(big)


def test_moe_reads_the_experts_its_tokens_pick():
    mixtral = BUILTIN_MODELS["mixtral-8x7b"]
    s = steps(mixtral, weights=1000, experts=800)
    assert s.expert_fraction_read(1) == pytest.approx(2 / 8)
    assert s.expert_fraction_read(2) == pytest.approx(1 - (6 / 8) ** 2)
    assert s.bytes_moved(StepWork(1, 0, 0, 0)) == pytest.approx(200 + 800 * 2 / 8 + 10)
    assert s.expert_fraction_read(10_000) == pytest.approx(1.0)
    # a token multiplies by the shared weights and 2 of the 8 experts
    dense_part = mixtral.matmul_parameters_per_token() - 32 * 2 * 3 * 4096 * 14336
    assert dense_part == 32 * (4096 * 4096 * 2 + 2 * 1024 * 4096 + 8 * 4096)


def test_combine_adds_every_field():
    total = combine(StepWork(1, 2, 3, 4), StepWork(10, 20, 30, 40))
    assert total == StepWork(11, 22, 33, 44)


def test_default_efficiencies_name_their_sources():
    for eff in DEFAULT_EFFICIENCY.values():
        assert 0 < eff.bandwidth <= 1 and 0 < eff.compute <= 1
        assert eff.bandwidth_source and eff.compute_source
    with pytest.raises(ValueError, match="efficiency"):
        Efficiency(1.5, 0.5, "", "")


def test_tensor_parallel_steps_add_their_all_reduces():
    # two ring all-reduces a layer of tokens x hidden activations; each rank sends 2 (n - 1) / n of them
    s = StepModel(SHAPE, 1000, 0, kv_bytes_per_token=10, bandwidth_bytes_per_s=100.0, peak_flops=1000.0,
                  efficiency=EFF, tensor_parallel_size=4, interconnect_bytes_per_s=40.0, activation_bytes=2)
    work = StepWork(num_tokens=3, num_logit_rows=1, attention_pairs=5, kv_tokens_read=7)
    sent = 2 * 2 * (3 * 8 * 2) * 2 * 3 / 4  # layers x all-reduces x activations x ring share
    assert s.allreduce_bytes(work) == sent
    assert s.allreduce_calls == 2 * 2
    assert s.link_seconds(work) == sent / (40.0 * 0.5)
    assert s.seconds(work) == max(s.compute_seconds(work), s.memory_seconds(work)) + sent / 20.0
    assert (steps().allreduce_calls, steps().link_seconds(work)) == (0, 0.0)  # one device: nothing to reduce
    with pytest.raises(ConfigError, match="device-to-device bandwidth"):
        steps(tp=2).seconds(work)


GPU_EFF = Efficiency(0.5, 0.25, "test", "test", kernel_latency_s=5e-6, kernels_per_layer=9, allreduce_latency_s=1e-5,
                     link=0.8)


def test_gpu_steps_pay_each_kernel_and_each_all_reduce_call():
    # 2 layers x 9 kernels x 5 us; with --tp 2 also 2 all-reduce calls a layer x 10 us, and the bytes over the
    # links at their own share (0.8), not the memory's (0.5)
    one = StepModel(SHAPE, 1000, 0, 10, 100.0, 1000.0, GPU_EFF)
    two = replace(one, tensor_parallel_size=2, interconnect_bytes_per_s=40.0)
    work = decode_work(1, 1)
    roof = max(one.compute_seconds(work), one.memory_seconds(work))
    assert one.latency_seconds() == pytest.approx(2 * 9 * 5e-6)
    assert one.seconds(work) == pytest.approx(roof + 2 * 9 * 5e-6)
    assert two.link_seconds(work) == pytest.approx(two.allreduce_bytes(work) / (40.0 * 0.8))
    assert two.latency_seconds() == pytest.approx(2 * 9 * 5e-6 + 2 * 2 * 1e-5)
    roof2 = max(two.compute_seconds(work), two.memory_seconds(work))
    assert two.seconds(work) == pytest.approx(roof2 + two.link_seconds(work) + 2 * 9 * 5e-6 + 2 * 2 * 1e-5)


def test_only_the_gpu_defaults_carry_latencies():
    cpu, gpu = DEFAULT_EFFICIENCY["cpu"], DEFAULT_EFFICIENCY["gpu"]
    assert (cpu.kernel_latency_s, cpu.kernels_per_layer, cpu.allreduce_latency_s, cpu.link) == (0, 0, 0, None)
    work = decode_work(1, 1)
    assert steps().seconds(work) == max(steps().compute_seconds(work), steps().memory_seconds(work))
    assert gpu.kernel_latency_s > 0 and gpu.kernels_per_layer > 0 and gpu.allreduce_latency_s > 0 and gpu.link
    assert "nccl" in gpu.latency_source.lower() and "FasterTransformer" in gpu.latency_source
    with pytest.raises(ConfigError, match="latency"):
        Efficiency(0.5, 0.5, "", "", kernel_latency_s=-1e-6)
    with pytest.raises(ConfigError, match="link"):
        Efficiency(0.5, 0.5, "", "", link=1.5)


def test_a_batch_one_gpu_decode_is_weights_at_the_streaming_share_plus_its_kernels():
    # FasterTransformer's 13B GPT on one A100 40GB decodes in 22.0 ms a token (llm-analysis's example, quoting
    # kipply's measurements; bench/planner_validation.py); 26 GB of fp16 weights at 88% of 1,555 GB/s and 40
    # layers of 9 kernels at 5 us: within 10% (the bandwidth share alone, 0.6, made it +30%)
    shape = ModelShape("13b", vocab_size=50272, hidden_size=5120, intermediate_size=13653, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=2048)
    weights = 2 * (shape.matmul_parameters_per_token() + 2 * 50272 * 5120)
    s = StepModel(shape, weights, 0, 2 * 40 * 5120 * 2, 1.555e12, 312e12, DEFAULT_EFFICIENCY["gpu"])
    assert s.seconds(decode_work(1, 517)) == pytest.approx(0.0220, rel=0.10)
