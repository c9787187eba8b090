"""Weight and KV formats: how many bytes a matrix or a token's K/V takes, scales and mins included.

A matrix of ``rows x cols`` weights is cut along ``cols`` into blocks of ``weights_per_block`` weights, each
``bytes_per_block`` bytes (codes plus the block's scale and min), plus ``bytes_per_row`` per output row
(per-channel scales). The GGUF rows are llama.cpp's block layouts (``GGML_QUANT_SIZES`` of the ``gguf``
package, checked against it in the tests; copied here so that planning never imports numpy or gguf).
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import ConfigError

# Compute paths a format's matrix products take. "quantized": weight-only formats, whose products run on
# whatever the hardware uses for them (hardware.Hardware.quantized_compute).
COMPUTE_DTYPES = ("fp32", "bf16", "fp8", "int8", "quantized")

# GGML type id -> (name, weights per block, bytes per block), from gguf.GGML_QUANT_SIZES (gguf 0.19).
GGUF_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
GGUF_TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGUF_TYPES.items()}
# How corral's CPU engine holds a GGUF matrix (loader/gguf.py _to_blocks): Q4_1 and Q8_0 blocks as stored,
# Q4_0 in Q4_1's layout (it stores the implied min, -8 x scale, beside each scale: 20 bytes, not 18), and
# every other type it can dequantize (loader/gguf.py DEQUANTIZABLE_TYPES) packed again as Q8_0.
CORRAL_GGUF_LAYOUTS = {"Q4_0": "Q4_1", "Q4_1": "Q4_1", "Q8_0": "Q8_0"}
CORRAL_DEQUANTIZABLE_GGUF_TYPES = frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"})
_FLOAT_GGUF_TYPES = frozenset({"F32", "F16", "BF16", "F64"})
# Plain integers, and the 8-bit types llama.cpp rounds activations to: never a model's weights.
_NOT_WEIGHT_TYPES = frozenset({"I8", "I16", "I32", "I64", "Q8_1", "Q8_K"})
# llama.cpp's legacy types (no super-blocks); its quantizer gives the output tensor Q8_0 beside these and
# Q6_K beside the k-quants and i-quants (approximately: llama_tensor_get_type has more cases).
_LEGACY_GGUF_TYPES = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"})


@dataclass(frozen=True)
class WeightFormat:
    """How a model's matrices are stored. The token embedding and the LM head may take other formats
    (``embedding``, ``lm_head``; None: this one); a tied embedding and head share one table in
    ``tied_table``, unless ``tied_head_separate`` (corral's int8 packs the head apart from the table)."""

    name: str
    weights_per_block: int
    bytes_per_block: int
    bytes_per_row: int = 0
    compute: str = "bf16"
    embedding: str | None = None
    lm_head: str | None = None
    tied_table: str | None = None
    tied_head_separate: bool = False
    float_bytes: int | None = None  # float formats: the activation dtype's bytes (fp32 4, bf16 2)
    description: str = ""

    def __post_init__(self) -> None:
        assert self.compute in COMPUTE_DTYPES, self.compute

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight of a long row, scales and mins included (per-row scales excluded)."""
        return 8 * self.bytes_per_block / self.weights_per_block

    @property
    def is_float(self) -> bool:
        return self.float_bytes is not None

    def matrix_bytes(self, rows: int, cols: int) -> int:
        if cols % self.weights_per_block:
            raise ConfigError(
                f"format {self.name}: a row of {cols} weights is not a whole number of blocks of {self.weights_per_block}"
            )
        return rows * (cols // self.weights_per_block * self.bytes_per_block + self.bytes_per_row)

    def embedding_format(self, tied: bool) -> WeightFormat:
        return self._named(self.tied_table if tied else self.embedding)

    def lm_head_format(self) -> WeightFormat:
        return self._named(self.lm_head)

    def _named(self, name: str | None) -> WeightFormat:
        return self if name is None else weight_format(name)


def _gguf_format(name: str) -> WeightFormat:
    _, per_block, nbytes = GGUF_TYPES[GGUF_TYPE_IDS[name]]
    if name in _FLOAT_GGUF_TYPES:
        compute = "fp32" if name in ("F32", "F64") else "bf16"
        return WeightFormat(name.lower(), per_block, nbytes, compute=compute, float_bytes=nbytes,
                            description=f"GGUF {name}")
    head = "q8_0" if name in _LEGACY_GGUF_TYPES else "q6_k"
    head_name = None if name.lower() == head else head
    return WeightFormat(
        name.lower(), per_block, nbytes, compute="quantized", lm_head=head_name, tied_table=head_name,
        description=f"GGUF {name}: {8 * nbytes / per_block:g} bits per weight with its scales; LM head in {head.upper()}",
    )


_INT4_GROUP_SIZES = (32, 64, 128, 256)  # corral's quantization.blockwise.GROUP_SIZES

_NAMED_FORMATS: dict[str, WeightFormat] = {
    "fp32": WeightFormat("fp32", 1, 4, compute="fp32", float_bytes=4, description="float32 (corral's exact CPU path)"),
    "bf16": WeightFormat("bf16", 1, 2, compute="bf16", float_bytes=2, description="bfloat16"),
    "fp16": WeightFormat("fp16", 1, 2, compute="bf16", float_bytes=2, description="float16"),
    # vLLM's --quantization fp8: per-tensor scales (4 bytes a matrix, ignored); embedding and head stay bf16
    "fp8": WeightFormat("fp8", 1, 1, compute="fp8", embedding="bf16", lm_head="bf16", tied_table="bf16",
                        description="fp8 e4m3 weights and activations; embedding and LM head in bf16"),
    # corral's int8 (quantization/int8.py): int8 codes + 8 bytes of scale per output row; the embedding as
    # int8 rows with a float32 scale each; a tied head gets its own packed copy (Int8DynamicLinear.nbytes)
    "int8": WeightFormat("int8", 1, 1, bytes_per_row=8, compute="int8", embedding="int8-rows", tied_table="int8-rows",
                         tied_head_separate=True,
                         description="int8 weights x int8 activations, a scale per output channel"),
    "int8-rows": WeightFormat("int8-rows", 1, 1, bytes_per_row=4, compute="int8",
                              description="int8 table rows with a float32 scale each"),
}


# A GGUF file's tensors in their own stored types (memory.tensor_bytes reads each tensor's type).
FILE_FORMAT = WeightFormat("file", 1, 1, compute="quantized", description="the GGUF file's own tensor types")


def weight_format(name: str, group_size: int | None = None) -> WeightFormat:
    """The format called ``name`` (case-insensitive): fp32, bf16, fp16, fp8, int8, int4 (``group_size``
    weights share an fp16 scale and min; default 32) or a GGUF type (q4_0, q4_k, ...)."""
    key = name.lower()
    if group_size is not None and key != "int4":
        raise ConfigError(f"--group-size applies to --format int4, not {name}")
    if key == "int4":
        group = 32 if group_size is None else group_size
        if group not in _INT4_GROUP_SIZES:
            raise ConfigError(f"--group-size must be one of {', '.join(map(str, _INT4_GROUP_SIZES))}, got {group}")
        # corral's BlockMethod int4: 4-bit codes, an fp16 scale and an fp16 min per group; tables as Q8_0
        return WeightFormat(f"int4-g{group}", group, group // 2 + 4, compute="quantized", embedding="q8_0",
                            tied_table="q8_0",
                            description=f"int4 weights in groups of {group} with an fp16 scale and min")
    if key in _NAMED_FORMATS:
        return _NAMED_FORMATS[key]
    if key.upper() in GGUF_TYPE_IDS and key.upper() not in _NOT_WEIGHT_TYPES:
        return _gguf_format(key.upper())
    raise ConfigError(f"unknown --format {name!r} (choose from {', '.join(format_names())})")


def format_names() -> list[str]:
    named = [n for n in _NAMED_FORMATS if n != "int8-rows"]
    gguf = sorted(n.lower() for n in GGUF_TYPE_IDS if n not in _FLOAT_GGUF_TYPES | _NOT_WEIGHT_TYPES)
    return ["auto", "file", *named, "int4", *gguf]


def gguf_type_format(type_id: int) -> WeightFormat:
    """The format of one GGUF tensor type, by its GGML type id."""
    if type_id not in GGUF_TYPES:
        raise ConfigError(f"unknown GGML tensor type id {type_id}")
    return _gguf_format(GGUF_TYPES[type_id][0])


# KV cache dtypes: bytes per element of a (token, KV head) row, and extra bytes per row.
# int8 is corral's layout (kernels/kv_int8.py): head_size codes then a float32 scale.
KV_DTYPES: dict[str, tuple[int, int]] = {"fp32": (4, 0), "bf16": (2, 0), "fp16": (2, 0), "fp8": (1, 0), "int8": (1, 4)}
KV_DTYPE_CHOICES = ("auto", "model", *KV_DTYPES)


def kv_row_bytes(kv_dtype: str, head_size: int) -> int:
    """Bytes of one (token, KV head) row of K (or V)."""
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"unknown --kv-dtype {kv_dtype!r} (choose from {', '.join(KV_DTYPE_CHOICES)})")
    element, extra = KV_DTYPES[kv_dtype]
    return head_size * element + extra
