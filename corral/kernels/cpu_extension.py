"""Find and load the C++/OpenMP extension built by ``python -m corral.kernels.build``.

The build leaves ``_build/corral_cpu_kernels*.so`` and, beside it, the hash of the sources it was built
from; a stale or missing build loads nothing and callers use their torch reference.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

NAME = "corral_cpu_kernels"
_CSRC = Path(__file__).parent / "csrc"
SOURCES = [
    _CSRC / name
    for name in (
        "module.cpp", "paged_attention.cpp", "kv_int8.cpp", "row_scaling.cpp", "rms_norm.cpp", "rotary.cpp",
        "block_linear.cpp", "decoder_layer.cpp", "prefill_attention.cpp",
    )
]
HEADERS = [_CSRC / "decoder_layer.h", _CSRC / "isa.h", _CSRC / "avx512_exp.h"]
BUILD_DIR = Path(__file__).parent / "_build"
HASH_FILE = BUILD_DIR / "sources.sha256"


def sources_hash() -> str:
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def build_problem() -> str | None:
    """Why the extension cannot be loaded for the current sources (not built, or stale), or None."""
    if not sorted(BUILD_DIR.glob(f"{NAME}*.so")) or not HASH_FILE.is_file():
        return "C++ kernels not built (make install builds them)"
    if HASH_FILE.read_text().strip() != sources_hash():
        return "C++ kernels are stale (sources changed since the build; make install rebuilds them)"
    return None


@functools.lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """The extension module, or None if it was not built for the current sources."""
    problem = build_problem()
    if problem is not None:
        logger.warning("%s: using the torch reference", problem)
        return None
    libraries = sorted(BUILD_DIR.glob(f"{NAME}*.so"))
    import torch  # noqa: F401  (the extension links against the libtorch this loads)

    spec = importlib.util.spec_from_file_location(NAME, libraries[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
