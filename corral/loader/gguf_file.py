"""A small, fast GGUF (v2/v3) header reader: metadata, tensor table and zero-copy views of tensor bytes.

``gguf.GGUFReader`` builds numpy objects for every element of every metadata array, which costs
seconds for a 50k-token vocabulary; this reader walks the header with ``struct`` and maps the
tensor data straight from the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from corral.errors import ModelLoadError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_SUPPORTED_VERSIONS = (2, 3)

# GGUF metadata value type id -> struct format (little-endian).
_SCALAR_FORMATS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file; ``data`` is its raw bytes as ``uint8[*shape[:-1], bytes_per_row]``."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order, e.g. [out_features, in_features] (GGUF stores it reversed)
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """Parsed header of a GGUF file. Tensor data stays memory-mapped until the arrays are dropped."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Cursor:
    """Sequential little-endian reads from a buffer."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.offset + length
        if end > len(self.buf):
            raise struct.error("string runs past the end of the file")
        text = self.buf[self.offset : end].decode("utf-8", errors="replace")
        self.offset = end
        return text

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(type_id)
        if fmt is None:
            raise ValueError(f"unknown metadata value type {type_id}")
        return self.unpack(fmt)

    def array(self) -> list[Any]:
        item_type = self.unpack("<I")
        count = self.unpack("<Q")
        fmt = _SCALAR_FORMATS.get(item_type)
        if fmt is None:
            return [self.value(item_type) for _ in range(count)]
        # numeric arrays (token types, scores) in one numpy call instead of a loop
        items = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.offset)
        self.offset += items.nbytes
        return items.tolist()


def read_gguf_file(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse the header of the GGUF file at ``path``; raise ``ModelLoadError`` if it is not a valid one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"not a GGUF file (bad magic): {path}")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(path, buf)
    except (struct.error, ValueError, OverflowError, MemoryError) as e:
        raise ModelLoadError(f"malformed or truncated GGUF file {path}: {e}") from e


def _parse(path: str, buf: mmap.mmap) -> GGUFFile:
    cursor = _Cursor(buf)
    cursor.offset = len(GGUF_MAGIC)
    version = cursor.unpack("<I")
    if version not in _SUPPORTED_VERSIONS:
        raise UnsupportedModelError(f"GGUF version {version} is not supported (need 2 or 3): {path}")
    num_tensors = cursor.unpack("<Q")
    num_kv = cursor.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(num_kv):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.unpack("<I"))

    infos = []
    for _ in range(num_tensors):
        name = cursor.string()
        num_dims = cursor.unpack("<I")
        dims = [cursor.unpack("<Q") for _ in range(num_dims)]
        type_id = cursor.unpack("<I")
        offset = cursor.unpack("<Q")
        infos.append((name, dims, type_id, offset))

    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    data_start = -(-cursor.offset // alignment) * alignment
    tensors = {}
    for name, dims, type_id, offset in infos:
        tensors[name] = _map_tensor(path, buf, name, dims, type_id, data_start + offset)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)


def _map_tensor(
    path: str, buf: mmap.mmap, name: str, dims: list[int], type_id: int, start: int
) -> GGUFTensor:
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise UnsupportedModelError(f"tensor {name!r} has unknown GGML type id {type_id}: {path}") from None
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    shape = tuple(reversed(dims))  # GGUF lists the fastest-varying dimension first
    row_len = shape[-1] if shape else 1
    if row_len % block_size:
        raise ModelLoadError(
            f"tensor {name!r}: row length {row_len} is not a multiple of the {qtype.name} block"
        )
    num_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    bytes_per_row = row_len // block_size * type_size
    num_bytes = num_rows * bytes_per_row
    if start + num_bytes > len(buf):
        raise ModelLoadError(
            f"truncated GGUF file {path}: tensor {name!r} needs bytes up to {start + num_bytes}, "
            f"file has {len(buf)}"
        )
    raw = np.frombuffer(buf, dtype=np.uint8, count=num_bytes, offset=start)
    return GGUFTensor(name=name, qtype=qtype, shape=shape, data=raw.reshape(*shape[:-1], bytes_per_row))
