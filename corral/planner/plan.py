"""One plan from one request: resolve the choices, then memory, per-batch latency, SLO batch, replicas, cost."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from corral.config import CacheConfig, SchedulerConfig
from corral.errors import ConfigError
from corral.planner.batching import BatchPoint, batch_point, largest_batch_meeting_slos, sweep_batches
from corral.planner.calibration_store import StoredCalibration
from corral.planner.cost import TokenCost, token_cost
from corral.planner.formats import (
    CORRAL_DEQUANTIZABLE_GGUF_TYPES,
    CORRAL_GGUF_LAYOUTS,
    FILE_FORMAT,
    GGUF_TYPES,
    WeightFormat,
    gguf_type_format,
    weight_format,
)
from corral.planner.hardware import Hardware, hardware, is_local
from corral.planner.memory import (
    DEFAULT_MEMORY_UTILIZATION,
    KVBudget,
    MemoryPlan,
    Parallelism,
    activation_peak_bytes,
    plan_memory,
    weight_bytes,
)
from corral.planner.model_files import load_model_shape
from corral.planner.models import ModelShape
from corral.planner.roofline import DEFAULT_EFFICIENCY, Efficiency, StepModel, decode_work
from corral.planner.traffic import LengthDistribution, TrafficProfile, replicas_needed

DEFAULT_CONTEXT_CAP = 4096  # corral's default max_model_len: the model's context, capped at 4096
# Scheduler limits per kind: corral's own defaults on CPUs, vLLM's OpenAI-server defaults on GPUs.
DEFAULT_MAX_NUM_SEQS = {"cpu": SchedulerConfig().max_num_seqs, "gpu": 256}
DEFAULT_MAX_NUM_BATCHED_TOKENS = {"cpu": SchedulerConfig().max_num_batched_tokens, "gpu": 8192}


@dataclass(frozen=True)
class PlanRequest:
    """Every input of a plan; None means "the default for this model and hardware"."""

    model: str | None = None
    format: str = "auto"
    group_size: int | None = None
    kv_dtype: str = "auto"
    context_len: int | None = None
    hardware: str | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    replicas: int | None = None
    requests_per_s: float | None = None
    prompt_len: str = "256"
    output_len: str = "128"
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 100.0
    headroom: float = 0.2
    block_size: int = CacheConfig().block_size
    kv_cache_memory: int | None = None
    memory_utilization: float | None = None  # None: vLLM's 0.9
    overhead_bytes: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    bandwidth_efficiency: float | None = None
    compute_efficiency: float | None = None
    price_per_hour: float | None = None


@dataclass(frozen=True)
class TrafficPlan:
    requests_per_s: float
    requests_in_flight: float
    replicas_needed: int
    replicas: int  # the --replicas given, else replicas_needed
    utilization: float  # in-flight sequences / (replicas x SLO batch)


@dataclass(frozen=True)
class Plan:
    model: ModelShape
    weight_format: WeightFormat
    activation_bytes: int
    hardware: Hardware
    parallel: Parallelism
    memory: MemoryPlan
    efficiency: Efficiency
    compute_dtype: str
    traffic: TrafficProfile
    max_num_seqs: int
    max_num_batched_tokens: int
    max_batch: int  # the most sequences one replica runs at once: scheduler cap and memory for max lengths
    points: list[BatchPoint]
    best: BatchPoint | None  # the largest batch within both SLOs
    prefill_tokens_per_s: float  # one prompt alone
    decode_tokens_per_s_single: float  # one sequence alone
    cost: TokenCost | None
    traffic_plan: TrafficPlan | None
    capacity_requests_per_s: float | None  # what the planned replicas sustain within the SLOs
    notes: list[str] = field(default_factory=list)
    steps: StepModel | None = None  # the roofline the figures came from (calibration predicts with it)
    calibration: str | None = None  # whether a calibration applied (local hardware only)


def build_plan(request: PlanRequest, hardware_row: Hardware | None = None, model_shape: ModelShape | None = None,
               calibration: tuple[StoredCalibration | None, str] | None = None) -> Plan:
    """The plan for ``request``; ``hardware_row`` replaces the table's row (a what-if one), ``model_shape``
    the model read from ``request.model``; ``calibration`` (this host's entry, or None, and a line saying
    so) applies to the local row only."""
    model = load_model_shape(request.model) if model_shape is None else model_shape
    local = hardware_row is None and is_local(request.hardware)
    hw = hardware(request.hardware) if hardware_row is None else hardware_row
    if request.price_per_hour is not None:
        if request.price_per_hour < 0:
            raise ConfigError("--price-per-hour must not be negative")
        hw = replace(hw, price_per_hour=request.price_per_hour, price_source="given with --price-per-hour")
    parallel = Parallelism(request.tensor_parallel_size, request.pipeline_parallel_size)
    parallel.check(model, hw)
    notes: list[str] = []
    fmt = resolve_format(request.format, request.group_size, model, hw, notes)
    activation_bytes = fmt.float_bytes or (4 if hw.kind == "cpu" else 2)
    kv_dtype = resolve_kv_dtype(request.kv_dtype, fmt, hw, activation_bytes)
    context = _context_len(request.context_len, model)
    traffic = TrafficProfile(
        request.requests_per_s, LengthDistribution.parse(request.prompt_len, "--prompt-len"),
        LengthDistribution.parse(request.output_len, "--output-len"), request.slo_ttft_ms / 1000,
        request.slo_tpot_ms / 1000, request.headroom,
    )
    max_num_seqs, max_num_batched_tokens = _scheduler_limits(request, hw.kind)
    if request.replicas is not None and request.replicas < 1:
        raise ConfigError("--replicas must be at least 1")

    weights = weight_bytes(model, fmt, activation_bytes, hw, parallel)
    activation = activation_peak_bytes(model, max_num_batched_tokens, max_num_seqs, activation_bytes,
                                       parallel.tensor_parallel_size)
    memory = plan_memory(model, weights, kv_dtype, hw, parallel, context, _kv_budget(request), request.block_size,
                         activation)
    compute_dtype = _compute_dtype(fmt, model, hw)
    if compute_dtype == "quantized":
        compute_dtype = hw.quantized_compute
    efficiency = _efficiency(hw, request.bandwidth_efficiency, request.compute_efficiency)
    calibration_line = None
    if local and calibration is not None:
        entry, calibration_line = calibration
        if entry is not None:
            hw, efficiency = _calibrated(hw, efficiency, entry, compute_dtype, request, notes)
    steps = StepModel(model, weights.per_device, weights.by_role.get("expert", 0) // parallel.num_devices,
                      memory.kv_bytes_per_token, hw.bandwidth_bytes_per_s, hw.flops_for(compute_dtype), efficiency,
                      parallel.tensor_parallel_size, hw.interconnect_bytes_per_s, activation_bytes)
    max_batch = min(max_num_seqs, memory.max_seqs(traffic.max_seq_len))
    points = [batch_point(steps, traffic, b, max_num_batched_tokens) for b in sweep_batches(max_batch)] if max_batch else []
    best = largest_batch_meeting_slos(steps, traffic, max_batch, max_num_batched_tokens)
    single = batch_point(steps, replace(traffic, output=LengthDistribution(1, 1)), 1, max_num_batched_tokens)
    prefill_rate = traffic.prompt.mean / single.ttft_s if traffic.prompt.mean else 0.0
    decode_single = 1 / steps.seconds(decode_work(1, traffic.prompt.mean + traffic.output.mean / 2))

    traffic_plan, capacity, replicas = _serve_traffic(best, traffic, request.replicas)
    cost = None if best is None else token_cost(best, hw.price_per_hour, parallel.num_devices,
                                                 replicas if traffic_plan or request.replicas else None)
    notes += _notes(model, hw.kind, memory, weights.repacked_as_q8_0, request, parallel, best, max_batch)
    return Plan(model, fmt, activation_bytes, hw, parallel, memory, efficiency, compute_dtype, traffic, max_num_seqs,
                max_num_batched_tokens, max_batch, points, best, prefill_rate, decode_single, cost, traffic_plan,
                capacity, notes, steps, calibration_line)


def _scheduler_limits(request: PlanRequest, kind: str) -> tuple[int, int]:
    max_num_seqs = DEFAULT_MAX_NUM_SEQS[kind] if request.max_num_seqs is None else request.max_num_seqs
    tokens = request.max_num_batched_tokens
    max_num_batched_tokens = DEFAULT_MAX_NUM_BATCHED_TOKENS[kind] if tokens is None else tokens
    if max_num_seqs < 1 or max_num_batched_tokens < 1:
        raise ConfigError("--max-num-seqs and --max-num-batched-tokens must be at least 1")
    return max_num_seqs, max_num_batched_tokens


def _kv_budget(request: PlanRequest) -> KVBudget:
    if request.kv_cache_memory is not None and (request.memory_utilization, request.overhead_bytes) != (None, None):
        raise ConfigError("--kv-cache-memory fixes the KV pool: --memory-utilization and --overhead-bytes do not apply")
    utilization = DEFAULT_MEMORY_UTILIZATION if request.memory_utilization is None else request.memory_utilization
    return KVBudget(request.kv_cache_memory, utilization, request.overhead_bytes)


def _serve_traffic(best: BatchPoint | None, traffic: TrafficProfile,
                   given_replicas: int | None) -> tuple[TrafficPlan | None, float | None, int]:
    """Replicas for the traffic rate (Little's law), and the request rate the replicas sustain within SLOs."""
    replicas = given_replicas or 1
    if best is None:
        return None, None, replicas
    traffic_plan = None
    if traffic.requests_per_s is not None:
        needed = replicas_needed(traffic.requests_per_s, best.request_latency_s, best.batch, traffic.headroom)
        replicas = given_replicas or needed
        in_flight = traffic.requests_per_s * best.request_latency_s
        traffic_plan = TrafficPlan(traffic.requests_per_s, in_flight, needed, replicas, in_flight / (replicas * best.batch))
    return traffic_plan, replicas * best.batch * (1 - traffic.headroom) / best.request_latency_s, replicas


def resolve_format(name: str, group_size: int | None, model: ModelShape, hw: Hardware, notes: list[str]) -> WeightFormat:
    """auto: a GGUF file's own types; otherwise int8 on a CPU (corral's auto for other checkpoints) and
    the checkpoint's dtype on a GPU."""
    key = name.lower()
    if group_size is not None and key != "int4":
        raise ConfigError(f"--group-size applies to --format int4, not {name}")
    if key == "auto":
        if model.file_tensors:
            return FILE_FORMAT
        key = "int8" if hw.kind == "cpu" else model.torch_dtype
        notes.append(f"--format auto chose {key} ({'corral on a CPU' if hw.kind == 'cpu' else 'the checkpoint dtype'})")
    if key == "file":
        if not model.file_tensors:
            raise ConfigError(f"--format file needs a GGUF model file; {model.name} is not one")
        return FILE_FORMAT
    return weight_format(key, group_size)


def resolve_kv_dtype(name: str, fmt: WeightFormat, hw: Hardware, activation_bytes: int) -> str:
    """auto: int8 beside quantized weights on a CPU (corral's rule), else the model's dtype."""
    key = name.lower()
    if key == "auto":
        key = "int8" if hw.kind == "cpu" and not fmt.is_float else "model"
    if key == "model":
        key = {4: "fp32", 2: "fp16" if fmt.name == "fp16" else "bf16"}[activation_bytes]
    return key


def _compute_dtype(fmt: WeightFormat, model: ModelShape, hw: Hardware) -> str:
    """A GGUF file computes as its main matrix type does; on a CPU always as blocks (corral packs them all)."""
    if fmt.name != FILE_FORMAT.name:
        return fmt.compute
    if hw.kind == "cpu":
        return "quantized"
    by_type: dict[int, int] = {}
    for t in model.file_tensors:
        if t.role in ("linear", "expert") and t.gguf_type is not None:
            by_type[t.gguf_type] = by_type.get(t.gguf_type, 0) + t.numel
    main = max(by_type, key=by_type.__getitem__) if by_type else 8
    return gguf_type_format(main).compute


def _context_len(given: int | None, model: ModelShape) -> int:
    if given is None:
        return min(model.max_position_embeddings, DEFAULT_CONTEXT_CAP)
    if given < 2:
        raise ConfigError("--context must be at least 2 tokens")
    if given > model.max_position_embeddings:
        raise ConfigError(f"--context {given} exceeds {model.name}'s {model.max_position_embeddings} positions")
    return given


def _efficiency(hw: Hardware, bandwidth: float | None, compute: float | None) -> Efficiency:
    default = DEFAULT_EFFICIENCY[hw.kind]  # its GPU latencies stay whichever factor is given
    return replace(
        default, bandwidth=default.bandwidth if bandwidth is None else bandwidth,
        compute=default.compute if compute is None else compute,
        bandwidth_source=default.bandwidth_source if bandwidth is None else "given with --bandwidth-efficiency",
        compute_source=default.compute_source if compute is None else "given with --compute-efficiency",
    )


def _calibrated(hw: Hardware, efficiency: Efficiency, entry: StoredCalibration, compute_dtype: str,
                request: PlanRequest, notes: list[str]) -> tuple[Hardware, Efficiency]:
    """The local row and factors under this host's calibration; a factor above 1 raises the row's peak
    (Efficiency stays a share). Flags given on the command line win."""
    f, source = entry.factors, f"calibrated on this host, {entry.date[:10]} ({entry.source})"
    bandwidth, bandwidth_source, compute, compute_source = (efficiency.bandwidth, efficiency.bandwidth_source,
                                                            efficiency.compute, efficiency.compute_source)
    if request.bandwidth_efficiency is None:
        hw = replace(hw, bandwidth_bytes_per_s=hw.bandwidth_bytes_per_s * max(1.0, f.bandwidth))
        bandwidth, bandwidth_source = min(1.0, f.bandwidth), source
    if request.compute_efficiency is None and compute_dtype == entry.compute_dtype:
        peaks = {**hw.peak_flops, compute_dtype: hw.peak_flops[compute_dtype] * max(1.0, f.compute)}
        hw = replace(hw, peak_flops=peaks)
        compute, compute_source = min(1.0, f.compute), source
    elif request.compute_efficiency is None:
        notes.append(f"the calibration fitted compute efficiency for {entry.compute_dtype} products, not "
                     f"{compute_dtype}: the default compute efficiency applies")
    return hw, replace(efficiency, bandwidth=bandwidth, compute=compute, bandwidth_source=bandwidth_source,
                       compute_source=compute_source, step_overhead_s=f.step_overhead_s, overhead_source=source)


def _notes(model: ModelShape, kind: str, memory: MemoryPlan, repacked: int, request: PlanRequest,
           parallel: Parallelism, best: BatchPoint | None, max_batch: int) -> list[str]:
    notes = []
    types = {GGUF_TYPES[t.gguf_type][0] for t in model.file_tensors if t.gguf_type is not None and len(t.shape) > 1}
    if repacked and kind == "cpu":
        notes.append(f"{repacked / 2**20:.1f} MiB of this file's matrices ({', '.join(sorted(types - set(CORRAL_GGUF_LAYOUTS)))}) "
                     "are held as Q8_0: corral's CPU engine keeps only Q4_0, Q4_1 and Q8_0 blocks packed")
    unloadable = types - CORRAL_DEQUANTIZABLE_GGUF_TYPES
    if unloadable and kind == "cpu":
        notes.append(f"corral cannot load {', '.join(sorted(unloadable))} tensors (it reads "
                     f"{', '.join(sorted(CORRAL_DEQUANTIZABLE_GGUF_TYPES))}); planned as if it held them as Q8_0")
    if request.kv_cache_memory is None and kind == "cpu":
        notes.append("corral serve's own KV pool defaults to 512 MiB (its --kv-cache-memory); pass "
                     "--kv-cache-memory 536870912 to plan that pool instead of the memory this machine could give it")
    if request.kv_cache_memory is not None:
        notes.append("--kv-cache-memory sets the KV pool as the engine's kv_cache_memory does: weights, "
                     "activations and overhead are not subtracted from it")
    if memory.weight.per_device > memory.usable_bytes and request.kv_cache_memory is None:
        notes.append(f"the weights alone ({memory.weight.per_device / 2**20:,.0f} MiB per device) exceed the usable "
                     f"{memory.usable_bytes / 2**20:,.0f} MiB: raise --tp or --pp, or choose a smaller --format")
    elif memory.num_blocks == 0:
        notes.append("no KV block fits: the weights, activation peak and overhead take the usable memory")
    elif memory.max_seqs_at_context == 0:
        notes.append(f"the KV pool holds {memory.num_kv_tokens} tokens, fewer than the context {memory.context_len}: "
                     "corral would refuse to start (raise the memory or lower --context)")
    if parallel.pipeline_parallel_size > 1:
        notes.append("pipeline stages run one after another here: throughput with --pp > 1 is a lower bound "
                     "(engines keep several batches in flight across stages)")
    if parallel.tensor_parallel_size > 1:
        notes.append("tensor-parallel all-reduces are modelled as bytes over the links plus a typical per-call "
                     "latency (NCCL's); engines with one-shot or NVLink SHARP all-reduces are faster at small batches")
    if max_batch and best is None:
        notes.append("even one sequence misses the SLOs: loosen them, shorten prompts, or pick faster hardware")
    return notes
