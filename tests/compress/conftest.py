"""Fixtures of the compress tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.compress.distill_models import make_tiny_dirs


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and lose much when the cores are shared (OpenMP waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """The distillation tests' tiny teacher, students and text (``distill_models.make_tiny_dirs``)."""
    return make_tiny_dirs(tmp_path_factory.mktemp("distill"))
