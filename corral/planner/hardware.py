"""The hardware table: memory, bandwidth, dense matrix throughput per compute dtype and an indicative
on-demand price, each row with its sources and dates.

GPU rows: the vendors' spec sheets, dense figures (without 2:4 sparsity); memory is the vendor's "GB" read
as GiB (what the board holds; the driver reserves a little, which ``overhead_bytes`` covers). CPU rows: the
2-vCPU machine kind this project runs on, as measured here (docs/performance.md, shared/MACHINE.md); their
"peak" figures are the best measured kernel rates, not datasheet peaks. Prices are indicative list prices
for one GPU (or one VM) on demand: they move monthly and differ by provider; pass ``--price-per-hour``.
GPU-to-GPU bandwidth (tensor-parallel all-reduces) is the datasheet's total NVLink / Infinity Fabric / PCIe
figure halved: those figures count both directions, and a ring all-reduce sends and receives at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.errors import ConfigError
from corral.platform import cpu_flags

GiB = 1024**3
TERA = 1e12
GIGA = 1e9


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or one CPU VM). ``peak_flops`` maps a compute dtype (formats.COMPUTE_DTYPES) to
    dense FLOP/s (OP/s for int8); a dtype the row lacks cannot be planned on it."""

    name: str
    kind: str  # "gpu" or "cpu"
    memory_bytes: int
    bandwidth_bytes_per_s: float
    peak_flops: dict[str, float]
    price_per_hour: float
    # the dtype weight-only formats (int4, GGUF blocks) compute in on this hardware
    quantized_compute: str
    spec_source: str
    price_source: str
    description: str = ""
    aliases: tuple[str, ...] = field(default=(), repr=False)
    # bytes per second one device sends to its peers (each direction), for tensor-parallel all-reduces
    interconnect_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.kind in ("gpu", "cpu"), self.kind
        if self.memory_bytes <= 0 or self.bandwidth_bytes_per_s <= 0:
            raise ConfigError(f"hardware {self.name}: memory and bandwidth must be positive")
        if any(v <= 0 for v in self.peak_flops.values()) or self.price_per_hour < 0:
            raise ConfigError(f"hardware {self.name}: throughputs must be positive and the price not negative")

    def flops_for(self, compute: str) -> float:
        dtype = self.quantized_compute if compute == "quantized" else compute
        if dtype not in self.peak_flops:
            known = ", ".join(self.peak_flops)
            raise ConfigError(f"--hardware {self.name} has no {dtype} throughput in the table (it has {known}): "
                              "choose another --format or --hardware")
        return self.peak_flops[dtype]


def _gpu(name: str, memory_gib: float, tb_per_s: float, tflops: dict[str, float], price: float, spec: str,
         price_source: str, description: str, aliases: tuple[str, ...] = (), link_gb_per_s: float = 0.0) -> Hardware:
    """``link_gb_per_s``: the datasheet's device-to-device bandwidth, both directions together."""
    return Hardware(name, "gpu", int(memory_gib * GiB), tb_per_s * TERA, {k: v * TERA for k, v in tflops.items()},
                    price, "bf16", spec, price_source, description, aliases, link_gb_per_s / 2 * GIGA)


_NV = "NVIDIA {} datasheet, dense Tensor Core figures and interconnect (as published 2023-2024)"
_MAY26 = "indicative on-demand, specialist clouds, as of 2026-05"

GPUS = (
    _gpu("h100-sxm", 80, 3.35, {"fp32": 67, "bf16": 989, "fp8": 1979, "int8": 1979}, 2.99, _NV.format("H100 SXM5"),
         f"{_MAY26}: Lambda $2.99/h (cliffcenter.com research note, 2026-05-18)",
         "NVIDIA H100 SXM5 80GB HBM3, NVLink 900 GB/s", ("h100",), 900),
    _gpu("h200", 141, 4.8, {"fp32": 67, "bf16": 989, "fp8": 1979, "int8": 1979}, 4.00, _NV.format("H200 SXM"),
         f"{_MAY26}: $3.50-4.50/h specialist range, midpoint (mercatus-ai.com cloud GPU pricing, 2026-05)",
         "NVIDIA H200 SXM 141GB HBM3e, NVLink 900 GB/s", ("h200-sxm",), 900),
    _gpu("a100-80gb", 80, 2.039, {"fp32": 19.5, "bf16": 312, "int8": 624}, 1.30, _NV.format("A100 80GB SXM4"),
         f"{_MAY26}: $1.10-1.50/h specialist range, midpoint (mercatus-ai.com cloud GPU pricing, 2026-05)",
         "NVIDIA A100 SXM4 80GB HBM2e (no fp8), NVLink 600 GB/s", ("a100",), 600),
    _gpu("l40s", 48, 0.864, {"fp32": 91.6, "bf16": 362, "fp8": 733, "int8": 733}, 1.86, _NV.format("L40S"),
         "indicative: AWS g6e.xlarge (1 L40S) us-east-1 on-demand list price, 2025, not re-checked",
         "NVIDIA L40S 48GB GDDR6, PCIe Gen4 x16 64 GB/s", link_gb_per_s=64),
    _gpu("l4", 24, 0.300, {"fp32": 30.3, "bf16": 121, "fp8": 242.5, "int8": 242.5}, 0.80, _NV.format("L4"),
         "indicative: AWS g6.xlarge (1 L4) us-east-1 on-demand list price ($0.805), 2025, not re-checked",
         "NVIDIA L4 24GB GDDR6, PCIe Gen4 x16 64 GB/s", link_gb_per_s=64),
    _gpu("a10g", 24, 0.600, {"fp32": 35, "bf16": 70, "int8": 140}, 1.01,
         "A10G is AWS's variant; NVIDIA publishes no sheet: figures from Baseten, 'NVIDIA A10 vs A10G for ML "
         "model inference' (2023)",
         "indicative: AWS g5.xlarge (1 A10G) us-east-1 on-demand list price ($1.006), 2025, not re-checked",
         "NVIDIA A10G 24GB GDDR6 (AWS G5; no fp8), PCIe Gen4 x16 64 GB/s", link_gb_per_s=64),
    _gpu("mi300x", 192, 5.3, {"fp32": 163.4, "bf16": 1307.4, "fp8": 2614.9, "int8": 2614.9}, 1.99,
         "AMD Instinct MI300X datasheet, dense figures; Infinity Fabric 7 x 128 GB/s to peers (2023)",
         f"{_MAY26}: median of MI300X on-demand offers (cliffcenter.com research note, 2026-05-18)",
         "AMD Instinct MI300X 192GB HBM3, Infinity Fabric 896 GB/s", link_gb_per_s=896),
)

_PERF = "measured on this project's machine, docs/performance.md and shared/MACHINE.md"
_VM_PRICE = ("indicative: a 2-vCPU memory-optimised cloud VM (AWS {} us-east-1 on-demand list price, 2025, "
             "not re-checked); the 24 GiB of this machine kind has no exact match")

CPUS = (
    Hardware(
        "cpu-zen3-2vcpu", "cpu", 24 * GiB, 21 * GIGA,
        {"fp32": 164 * GIGA, "bf16": 20 * GIGA, "int8": 299 * GIGA}, 0.1134, "int8",
        f"{_PERF} (AMD Zen 3, AVX2 only, 2026-11-24): DRAM read 21 GB/s (torch.sum over 1 GiB); fp32 GEMM "
        "164 GFLOP/s (MKL 2048^3); bf16 F.linear 20 GFLOP/s; int8 299 GFLOP/s (fbgemm, 32 rows, K=576)",
        _VM_PRICE.format("r6a.large, $0.1134/h"), "2 vCPU AMD EPYC Zen 3 (AVX2), 24 GiB", ("zen3",)),
    Hardware(
        "cpu-zen4-2vcpu", "cpu", 24 * GiB, 21 * GIGA, {"int8": 490 * GIGA}, 0.1134, "int8",
        f"{_PERF} (AMD Zen 4, AVX-512 VNNI/BF16, 2026-12-06): block-kernel linears 490 GFLOP/s at 64-512 rows; "
        "DRAM bandwidth NOT measured on this host: the Zen 3 host's 21 GB/s is assumed (same machine kind)",
        _VM_PRICE.format("r6a.large, $0.1134/h"), "2 vCPU AMD EPYC Zen 4 (AVX-512), 24 GiB", ("zen4",)),
    Hardware(
        "cpu-xeon-amx-2vcpu", "cpu", 24 * GiB, 29 * GiB,
        {"fp32": 295 * GIGA, "bf16": 1724 * GIGA, "int8": 240 * GIGA}, 0.1323, "bf16",
        f"{_PERF} (Intel Xeon with AMX, 2026-12-03): DRAM read 29 GiB/s (2 GiB); fp32 F.linear 295 and bf16 "
        "(oneDNN AMX) 1,724 GFLOP/s at 256 rows, K=576; int4 VNNI block kernel 240 GFLOP/s at 32 rows. Block-"
        "quantized batches run on bf16 copies there (batched_linears auto)",
        _VM_PRICE.format("r7i.large, $0.1323/h"), "2 vCPU Intel Xeon with AMX, 24 GiB (480 MiB L3)", ("amx",)),
)

HARDWARE: dict[str, Hardware] = {h.name: h for h in (*GPUS, *CPUS)}
_ALIASES = {alias: h.name for h in HARDWARE.values() for alias in h.aliases}


def local_cpu_name(flags: frozenset[str] | None = None) -> str:
    """The CPU row of the host this runs on, told apart as shared/MACHINE.md does (AMX, AVX-512 BF16, else
    the AVX2-only row, which is also the nearest measured row for an unknown host)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags or "amx_bf16" in flags:
        return "cpu-xeon-amx-2vcpu"
    if "avx512_bf16" in flags:
        return "cpu-zen4-2vcpu"
    return "cpu-zen3-2vcpu"


LOCAL_NAMES = ("local", "this", "cpu")


def is_local(name: str | None) -> bool:
    return name is None or name.lower() in LOCAL_NAMES


def hardware(name: str | None) -> Hardware:
    """The row called ``name`` (or an alias); None or "local": this machine's CPU row."""
    if is_local(name):
        return HARDWARE[local_cpu_name()]
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in HARDWARE:
        raise ConfigError(f"unknown --hardware {name!r} (known: local, {', '.join(HARDWARE)})")
    return HARDWARE[key]
