"""A fast GGUF (v2/v3) reader: metadata and tensor table (through the text package's cursor) and
zero-copy views of tensor bytes, mapped straight from the file."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.text.gguf_metadata import GGUFCursor

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32

@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file; ``data`` is its raw bytes as ``uint8[*shape[:-1], bytes_per_row]``."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order, e.g. [out_features, in_features] (GGUF stores it reversed)
    data: np.ndarray
    offset: int  # of ``data`` in the file


@dataclass(frozen=True)
class GGUFFile:
    """Parsed header of a GGUF file. Tensor data stays memory-mapped until the arrays are dropped."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    mapping: mmap.mmap = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def evict(self, tensor: GGUFTensor) -> None:
        """Drop ``tensor``'s file pages from this process's resident memory once it has been converted (the
        page cache keeps them; a later read faults them back in). Loading then never holds the whole file."""
        start = tensor.offset - tensor.offset % mmap.PAGESIZE
        self.mapping.madvise(mmap.MADV_DONTNEED, start, tensor.offset + tensor.data.nbytes - start)


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
    cursor = GGUFCursor(buf)
    version, num_tensors, metadata = cursor.header(path)
    infos = []
    for _ in range(num_tensors):
        name = cursor.string()
        num_dims = cursor.u32()
        dims = [cursor.u64() for _ in range(num_dims)]
        type_id = cursor.u32()
        offset = cursor.u64()
        infos.append((name, dims, type_id, offset))

    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    data_start = -(-cursor.offset // alignment) * alignment
    tensors = {}
    for name, dims, type_id, offset in infos:
        tensors[name] = _map_tensor(path, buf, name, dims, type_id, data_start + offset)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors, mapping=buf)


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
    return GGUFTensor(
        name=name, qtype=qtype, shape=shape, data=raw.reshape(*shape[:-1], bytes_per_row), offset=start
    )
