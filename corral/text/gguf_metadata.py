"""Read the metadata key/value section of a GGUF file, and nothing else.

``gguf.GGUFReader`` builds numpy views for every element of every array (about 5 s for a 49k-token
vocabulary plus its merges) and maps every tensor. The tokenizer needs only the key/value section,
which this walks with ``struct`` in a fraction of that. The loader's reader continues from where
this cursor stops to read the tensor table.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from typing import Any

from corral.errors import ModelLoadError, UnsupportedModelError

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
_STRING, _ARRAY = 8, 9
# GGUF value type id -> struct format character (all little-endian).
_SCALAR_FORMATS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def read_gguf_metadata(
    path: str | os.PathLike[str], wanted: Callable[[str], bool] = lambda key: True
) -> dict[str, Any]:
    """The metadata of the GGUF file at ``path`` whose keys pass ``wanted``.

    Scalars come back as Python numbers or bools, strings as ``str``, arrays as lists.
    Raises ``ModelLoadError`` for a missing, truncated or malformed file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"GGUF file not found: {path}")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return GGUFCursor(buf).header(path, wanted)[2]
    except (struct.error, ValueError, OverflowError, MemoryError, OSError) as e:
        raise ModelLoadError(f"malformed or truncated GGUF file {path}: {e}") from e


class GGUFCursor:
    """A cursor over a mapped GGUF file; each read advances ``offset``. Little-endian GGUF v2/v3."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.offset = 0

    def header(
        self, path: str, wanted: Callable[[str], bool] = lambda key: True
    ) -> tuple[int, int, dict[str, Any]]:
        """(version, number of tensors, metadata); leaves ``offset`` at the tensor table."""
        if self.buf[:4] != _MAGIC:
            raise ModelLoadError(f"not a GGUF file (bad magic): {path}")
        self.offset = 4
        version = self.u32()
        if version not in _SUPPORTED_VERSIONS:
            raise UnsupportedModelError(f"GGUF version {version} is not supported (need 2 or 3): {path}")
        num_tensors = self.u64()
        num_kv = self.u64()
        result: dict[str, Any] = {}
        for _ in range(num_kv):
            key = self.string()
            type_id = self.u32()
            if wanted(key):
                result[key] = self.value(type_id)
            else:
                self.skip(type_id)
        return version, num_tensors, result

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.buf, self.offset)
        self.offset += 4
        return value

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.buf, self.offset)
        self.offset += 8
        return value

    def string(self) -> str:
        length = self.u64()
        end = self.offset + length
        if end > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        text = self.buf[self.offset : end].decode("utf-8", errors="replace")
        self.offset = end
        return text

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _SCALAR_FORMATS:
                fmt = struct.Struct(f"<{count}{_SCALAR_FORMATS[item_type]}")
                items = list(fmt.unpack_from(self.buf, self.offset))
                self.offset += fmt.size
                return items
            return [self.value(item_type) for _ in range(count)]
        fmt = _SCALAR_FORMATS.get(type_id)
        if fmt is None:
            raise ValueError(f"unknown metadata value type {type_id}")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def skip(self, type_id: int) -> None:
        if type_id == _STRING:
            length = self.u64()
            self.offset += length
        elif type_id == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _SCALAR_FORMATS:
                self.offset += count * struct.calcsize(_SCALAR_FORMATS[item_type])
            else:
                for _ in range(count):
                    self.skip(item_type)
        elif type_id in _SCALAR_FORMATS:
            self.offset += struct.calcsize(_SCALAR_FORMATS[type_id])
        else:
            raise ValueError(f"unknown metadata value type {type_id}")
