"""corral.text.gguf_metadata: the key/value section read back as written, and clear errors."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.text.gguf_metadata import read_gguf_metadata


def test_values_round_trip(tmp_path: Any) -> None:
    import gguf

    path = str(tmp_path / "kv.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("s", "héllo ▁ 😀")
    writer.add_bool("flag", True)
    writer.add_uint32("u32", 7)
    writer.add_int64("i64", -3)
    writer.add_float32("f32", 0.5)
    writer.add_array("strings", ["a", "", "Ġb"])
    writer.add_array("ints", [3, -1, 4])
    writer.add_array("floats", [0.25, -2.0])
    writer.add_array("nested", [[1, 2], [3]])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    metadata = read_gguf_metadata(path)
    assert metadata["general.architecture"] == "llama"
    assert metadata["s"] == "héllo ▁ 😀" and metadata["flag"] is True
    assert (metadata["u32"], metadata["i64"], metadata["f32"]) == (7, -3, 0.5)
    assert metadata["strings"] == ["a", "", "Ġb"]
    assert metadata["ints"] == [3, -1, 4] and metadata["floats"] == [0.25, -2.0]
    assert metadata["nested"] == [[1, 2], [3]]
    only = read_gguf_metadata(path, lambda key: key in ("ints", "f32"))
    assert only == {"ints": [3, -1, 4], "f32": 0.5}


def test_default_model_tokenizer_keys(smollm2_gguf_path: str) -> None:
    metadata = read_gguf_metadata(smollm2_gguf_path, lambda key: key.startswith("tokenizer."))
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == "smollm"
    assert len(metadata["tokenizer.ggml.tokens"]) == len(metadata["tokenizer.ggml.token_type"]) == 49152
    assert metadata["tokenizer.ggml.merges"][0] == "Ġ t"
    assert metadata["tokenizer.ggml.add_bos_token"] is False


def test_errors(tmp_path: Any, gguf_writer: Any) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        read_gguf_metadata(tmp_path / "missing.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + b"\0" * 32)
    with pytest.raises(ModelLoadError, match="magic"):
        read_gguf_metadata(tmp_path / "bad.gguf")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(UnsupportedModelError, match="version 1"):
        read_gguf_metadata(tmp_path / "v1.gguf")
    whole = open(gguf_writer("t.gguf", {"tokenizer.ggml.tokens": ["a", "b"]}), "rb").read()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_gguf_metadata(tmp_path / "cut.gguf")
