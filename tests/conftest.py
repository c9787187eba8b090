"""Shared fixtures: the default model (found through its installed package) and engines over it."""

from __future__ import annotations

import pytest

from corral.loader.default_model import default_model_path


@pytest.fixture(scope="session")
def default_model() -> str:
    return default_model_path()


@pytest.fixture(scope="session")
def default_llm():
    """One fp32 engine over the default model, shared by tests that do not change its settings."""
    from corral import LLM

    return LLM(dtype="float32", max_model_len=1024, kv_cache_memory=128 * 1024**2)
