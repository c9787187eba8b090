"""Shared fixtures: the default model (found through its installed package) and engines over it."""

from __future__ import annotations

import pytest

from corral.loader.default_model import default_model_path


@pytest.fixture(scope="session")
def default_model() -> str:
    return default_model_path()


@pytest.fixture(scope="session")
def default_llm():
    """One exact fp32 engine over the default model (no int8), shared by tests that do not change its
    settings; the parity tests compare it with HF transformers."""
    from corral import LLM

    return LLM(dtype="float32", quantization="none", max_model_len=1024, kv_cache_memory=128 * 1024**2)
