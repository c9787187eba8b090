"""Checkpoints with packed weights, as ``corral quantize`` writes them: an HF directory whose matrices are
stored as ``BlockQuantized`` blocks instead of floats.

``config.json`` carries ``"quantization_config": {"quant_method": "corral", "format_version": 1, "method":
..., "bits": ..., "group_size": ..., "activation_bits": ...}`` describing the decoder layers' linear weights
and how finely the kernels round their inputs (8 when absent: directories written before the key existed
ran at 8); the token embedding
(and an untied LM head) is always int8 with one scale per row. A packed matrix ``X.weight`` is stored as

    X.qweight  int4: [rows, cols / 2] uint8 (two codes per byte, as ``kernels.block_linear`` packs them);
               int8: [rows, cols] int8
    X.scales   [rows, cols / group_size] float16
    X.mins     [rows, cols / group_size] float16 (int4 only)

Everything else (norms, biases) is stored as float under its usual name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from corral.config import DEFAULT_QUANTIZED_ACTIVATION_BITS, QUANTIZE_METHODS
from corral.errors import ModelLoadError, QuantizationError
from corral.quantization.blockwise import BlockQuantized, check_activation_bits

FORMAT_VERSION = 1
QUANT_METHOD = "corral"  # the quant_method key of an HF quantization_config
PACKED_PARTS = ("qweight", "scales", "mins")
_TABLE_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class PackedFormat:
    """How a checkpoint's decoder-layer linears are packed; ``group_size=None``: one scale per output row."""

    method: str  # one of config.QUANTIZE_METHODS
    bits: int
    group_size: int | None
    activation_bits: int = DEFAULT_QUANTIZED_ACTIVATION_BITS  # config.ACTIVATION_BITS: rounding of linears' inputs

    def __post_init__(self) -> None:
        if self.method not in QUANTIZE_METHODS:
            raise QuantizationError(f"unknown method {self.method!r} (choose from {', '.join(QUANTIZE_METHODS)})")
        if self.bits != (8 if self.method == "int8" else 4):
            raise QuantizationError(f"method {self.method} stores {self.bits}-bit weights")
        if self.group_size is None and self.bits == 4 or self.group_size is not None and self.group_size < 1:
            raise QuantizationError(f"invalid group size {self.group_size} for {self.bits}-bit weights")
        check_activation_bits(self.activation_bits)

    def to_json(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "activation_bits": self.activation_bits,
        }

    @classmethod
    def from_json(cls, raw: Any, source: str) -> PackedFormat:
        """Parse a ``quantization_config``; ModelLoadError if it is not one this version wrote."""
        if not isinstance(raw, dict) or raw.get("quant_method") != QUANT_METHOD:
            found = raw.get("quant_method") if isinstance(raw, dict) else raw
            raise ModelLoadError(f"{source}: quantization_config {found!r} is not supported (only {QUANT_METHOD!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(f"{source}: packed format version {raw.get('format_version')!r} is not {FORMAT_VERSION}")
        try:
            group_size = None if raw["group_size"] is None else int(raw["group_size"])
            return cls(str(raw["method"]), int(raw["bits"]), group_size, int(raw.get("activation_bits", 8)))
        except (KeyError, TypeError, ValueError, QuantizationError) as e:
            raise ModelLoadError(f"{source}: corrupt quantization_config: {e}") from e

    def expected(self, name: str, cols: int) -> tuple[int, int]:
        """(bits, group size) the weight ``name`` of input width ``cols`` must be stored with."""
        if name in _TABLE_NAMES:
            return 8, cols
        return self.bits, cols if self.group_size is None else self.group_size


def packed_tensors(name: str, blocks: BlockQuantized) -> dict[str, torch.Tensor]:
    """The tensors that store ``blocks`` as the weight ``name`` (``X.weight``)."""
    prefix = name.removesuffix(".weight")
    tensors = {f"{prefix}.qweight": blocks.values, f"{prefix}.scales": blocks.scales}
    if blocks.mins is not None:
        tensors[f"{prefix}.mins"] = blocks.mins
    return {key: t.contiguous() for key, t in tensors.items()}


def packed_shapes(
    shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], source: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """From a file's tensor shapes and safetensors dtypes (``"U8"``, ``"F16"``, ...): the logical weight
    shapes (``X.weight`` -> [rows, cols], packed parts folded into it) and, for each packed weight, the
    prefix its parts are stored under."""
    logical = {name: shape for name, shape in shapes.items() if name.rsplit(".", 1)[-1] not in PACKED_PARTS}
    prefixes: dict[str, str] = {}
    for name, shape in shapes.items():
        prefix, part = name.rsplit(".", 1) if "." in name else ("", name)
        if part != "qweight":
            continue
        if len(shape) != 2 or f"{prefix}.scales" not in shapes:
            raise ModelLoadError(f"{source}: packed weight {prefix} lacks its scales or is not 2-D")
        rows, width = shape
        logical[f"{prefix}.weight"] = (rows, width * 2 if dtypes[name] == "U8" else width)
        prefixes[f"{prefix}.weight"] = prefix
    stray = [
        n for n in shapes if n.rsplit(".", 1)[-1] in PACKED_PARTS[1:] and f"{n.rsplit('.', 1)[0]}.weight" not in prefixes
    ]
    if stray:
        raise ModelLoadError(f"{source}: {stray[0]} belongs to no packed weight")
    return logical, prefixes


def read_packed(
    name: str, parts: Mapping[str, torch.Tensor], packed_format: PackedFormat, source: str
) -> BlockQuantized:
    """The blocks of weight ``name`` from its stored parts, checked against the checkpoint's format."""
    values, scales, mins = parts["qweight"], parts["scales"], parts.get("mins")
    bits = 4 if values.dtype == torch.uint8 else 8 if values.dtype == torch.int8 else 0
    cols = values.shape[1] * (2 if bits == 4 else 1)
    expected_bits, expected_group = packed_format.expected(name, cols)
    if bits != expected_bits or scales.dim() != 2 or scales.shape[1] * expected_group != cols:
        raise ModelLoadError(
            f"{source}: {name} is stored as {values.dtype} codes with {tuple(scales.shape)} scales, but the "
            f"quantization_config implies {expected_bits}-bit groups of {expected_group} over {cols} columns"
        )
    try:
        return BlockQuantized(bits, expected_group, values, scales, mins)
    except QuantizationError as e:
        raise ModelLoadError(f"{source}: {name}: {e}") from e
