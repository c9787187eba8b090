"""Time of one engine step from a roofline: the slower of its matrix work at the compute dtype's peak times
a compute efficiency, and its memory traffic at peak bandwidth times a bandwidth efficiency.

FLOPs of a step: 2 x (weights a token multiplies by) per token, 2 x vocab x hidden per row of logits,
and 4 x heads x head_size per (query, key) pair per layer for attention (QK^T and PV). Bytes: every weight
the step touches once (an MoE layer's experts as many as its tokens are expected to pick), the K/V of every
attended token read once, and the new tokens' K/V written. Tensor-parallel ranks split FLOPs and bytes
evenly, and after the attention and the MLP of every layer they all-reduce the step's activations (tokens x
hidden); a ring all-reduce sends 2 (n - 1) / n of them from each rank over its links, at a share of their peak
(the memory's share unless the efficiency names one), after the layer's matrix work (engines do not overlap
the two by default).

On a GPU a step also pays fixed latencies that no roofline sees (what dominates a batch-1 decode of a small
model): each of a decoder layer's kernels costs a few microseconds beyond its traffic, and each all-reduce
call a small-message latency. The GPU defaults give both with their sources; the CPU rows have none (a
calibration may fit a per-step overhead there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from corral.errors import ConfigError
from corral.planner.models import ModelShape


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the hardware's peaks an engine reaches: bandwidth in decode, compute in prefill."""

    bandwidth: float
    compute: float
    bandwidth_source: str
    compute_source: str
    # fixed time every engine step takes beside its roofline (scheduling, sampling, Python): calibrated on a
    # CPU host, 0 otherwise
    step_overhead_s: float = 0.0
    overhead_source: str = "not modelled"
    # GPU fixed latencies: seconds per kernel beyond its traffic, kernels per decoder layer, seconds per
    # tensor-parallel all-reduce call; and the share of the links' peak the all-reduces reach (None: the
    # bandwidth share)
    kernel_latency_s: float = 0.0
    kernels_per_layer: int = 0
    allreduce_latency_s: float = 0.0
    link: float | None = None
    latency_source: str = "not modelled"

    def __post_init__(self) -> None:
        if not 0 < self.bandwidth <= 1 or not 0 < self.compute <= 1:
            raise ConfigError("--bandwidth-efficiency and --compute-efficiency must be in (0, 1]")
        if self.link is not None and not 0 < self.link <= 1:
            raise ConfigError("a link efficiency must be in (0, 1]")
        if min(self.step_overhead_s, self.kernel_latency_s, self.kernels_per_layer, self.allreduce_latency_s) < 0:
            raise ConfigError("a step overhead or latency must not be negative")


DEFAULT_EFFICIENCY = {
    "cpu": Efficiency(
        0.6, 0.6,
        "corral's single-stream decode of the default model on the Zen 3 host, 130 tok/s x 96.6 MB of weights "
        "= 12.6 GB/s of 21 GB/s (docs/performance.md, 2026-12-06)",
        "corral's 512-token prefill on the Zen 3 host, 786 ms for about 138 GFLOP = 176 GFLOP/s of the 299 "
        "GFLOP/s int8 kernel rate (docs/performance.md, 2026-12-06)",
    ),
    "gpu": Efficiency(
        0.88, 0.5,
        "streaming weights at what HBM microbenchmarks reach: a read kernel on an A100 80GB SXM made 1.80 of "
        "2.04 TB/s, 88% by Nsight Compute (NVIDIA developer forum, 'Trouble to Reach Peak Bandwidth of A100', "
        "forums.developer.nvidia.com/t/339083); a device-to-device copy on this project's H100 made about 3.0 "
        "of 3.35 TB/s (shared/MACHINE.md)",
        "assumption: a bf16 8192^3 matmul reached about 800 of 989 TFLOP/s on an H100 (shared/MACHINE.md); "
        "a whole prefill (attention, norms, small GEMMs) runs well below that. Calibrate (issue 28, part 3)",
        kernel_latency_s=5e-6, kernels_per_layer=9, allreduce_latency_s=10e-6, link=0.67,
        latency_source="9 kernels a decoder layer (FasterTransformer's GPT decode layer: layer norm, QKV GEMM, "
        "fused attention, output GEMM, bias + residual + layer norm, two FFN GEMMs, bias + GeLU, bias + residual; "
        "ParallelGptDecoder.cc) at 5 us each (a kernel launch takes about 4-6 us: susun-blog.com, 'pegainfer "
        "(3): From Launch Overhead to CUDA Graph'); 10 us an all-reduce call (nccl-tests on two NVLink A100s: "
        "9.85 us at 8 bytes, NVIDIA/nccl-tests#331; about 6 us on two H100s with NVLink SHARP, NVIDIA/nccl#1259); "
        "links at 0.67 of their peak (nccl-tests busbw about 200 of 300 GB/s on 8 A100s, NVIDIA/nccl-tests#149)",
    ),
}


@dataclass(frozen=True)
class StepWork:
    """What one engine step computes: ``num_tokens`` new tokens (decodes and prefill chunks), logits for
    ``num_logit_rows`` of them, ``attention_pairs`` (query, key) pairs per head and layer, and the K/V of
    ``kv_tokens_read`` cached tokens read."""

    num_tokens: float
    num_logit_rows: float
    attention_pairs: float
    kv_tokens_read: float


@dataclass(frozen=True)
class StepModel:
    """Roofline time of engine steps of one model on one replica (per device: tensor-parallel shares)."""

    model: ModelShape
    weight_bytes_per_device: int
    expert_bytes_per_device: int  # the MoE experts' share of the above (0 for a dense model)
    kv_bytes_per_token: int  # per device
    bandwidth_bytes_per_s: float
    peak_flops: float
    efficiency: Efficiency
    tensor_parallel_size: int = 1
    interconnect_bytes_per_s: float = 0.0  # what one device sends to its peers per second (one direction)
    activation_bytes: int = 2  # bytes of one activation the all-reduces carry

    @functools.cached_property
    def _matmul_parameters_per_token(self) -> int:  # walks every tensor: once per model, not once per step
        return self.model.matmul_parameters_per_token()

    def flops(self, work: StepWork) -> float:
        m = self.model
        matmul = 2 * self._matmul_parameters_per_token * work.num_tokens
        logits = 2 * m.vocab_size * m.hidden_size * work.num_logit_rows
        attention = 4 * m.num_hidden_layers * m.num_attention_heads * m.head_size * work.attention_pairs
        return (matmul + logits + attention) / self.tensor_parallel_size

    def bytes_moved(self, work: StepWork) -> float:
        weights = self.weight_bytes_per_device - self.expert_bytes_per_device
        weights += self.expert_bytes_per_device * self.expert_fraction_read(work.num_tokens)
        return weights + self.kv_bytes_per_token * (work.kv_tokens_read + work.num_tokens)

    def expert_fraction_read(self, num_tokens: float) -> float:
        """Expected share of an MoE layer's experts that ``num_tokens`` tokens pick at least once, each
        picking ``num_experts_per_tok`` of ``num_local_experts`` uniformly."""
        m = self.model
        if not m.is_moe:
            return 1.0
        return 1.0 - (1.0 - m.num_experts_per_tok / m.num_local_experts) ** num_tokens

    def compute_seconds(self, work: StepWork) -> float:
        return self.flops(work) / (self.peak_flops * self.efficiency.compute)

    def memory_seconds(self, work: StepWork) -> float:
        return self.bytes_moved(work) / (self.bandwidth_bytes_per_s * self.efficiency.bandwidth)

    @property
    def allreduce_calls(self) -> int:
        """Tensor-parallel all-reduces a step makes: two a layer (0 without tensor parallelism)."""
        return 2 * self.model.num_hidden_layers if self.tensor_parallel_size > 1 else 0

    def allreduce_bytes(self, work: StepWork) -> float:
        """What each tensor-parallel rank sends in one step: a ring all-reduce of the step's activations per
        call."""
        n = self.tensor_parallel_size
        per_allreduce = work.num_tokens * self.model.hidden_size * self.activation_bytes * 2 * (n - 1) / n
        return self.allreduce_calls * per_allreduce

    def link_seconds(self, work: StepWork) -> float:
        """The all-reduces' bytes over the links at their share of the peak."""
        sent = self.allreduce_bytes(work)
        if sent == 0:
            return 0.0
        if self.interconnect_bytes_per_s <= 0:
            raise ConfigError("tensor parallelism needs the hardware row's device-to-device bandwidth")
        link = self.efficiency.bandwidth if self.efficiency.link is None else self.efficiency.link
        return sent / (self.interconnect_bytes_per_s * link)

    def latency_seconds(self) -> float:
        """What a step pays whatever its work: kernels, all-reduce calls and the step overhead."""
        eff = self.efficiency
        return (self.model.num_hidden_layers * eff.kernels_per_layer * eff.kernel_latency_s
                + self.allreduce_calls * eff.allreduce_latency_s + eff.step_overhead_s)

    def seconds(self, work: StepWork) -> float:
        return (max(self.compute_seconds(work), self.memory_seconds(work)) + self.link_seconds(work)
                + self.latency_seconds())


def decode_work(num_seqs: float, mean_context: float) -> StepWork:
    """``num_seqs`` sequences each decoding one token after ``mean_context`` cached tokens."""
    return StepWork(num_seqs, num_seqs, num_seqs * mean_context, num_seqs * mean_context)


def combine(*parts: StepWork) -> StepWork:
    return StepWork(*(sum(getattr(p, f) for p in parts) for f in StepWork.__dataclass_fields__))
