"""``python -m corral.kernels.build``: compile the C++ kernels into ``corral/kernels/_build`` (about a
minute on 2 cores; ``make install`` runs it). Only ``module.cpp`` (the Python bindings) includes
``torch/extension.h``; the other sources include ``ATen/ATen.h``, which compiles in a third of the time."""

from __future__ import annotations

import shutil
import sys

from corral.kernels.cpu_extension import BUILD_DIR, HASH_FILE, NAME, SOURCES, sources_hash


def main() -> int:
    from torch.utils import cpp_extension

    if shutil.which("c++") is None and shutil.which("g++") is None:
        print("no C++ compiler: corral will use its torch reference kernels", file=sys.stderr)
        return 0
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    HASH_FILE.unlink(missing_ok=True)
    cpp_extension.load(
        name=NAME,
        sources=[str(s) for s in SOURCES],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(BUILD_DIR),
        verbose=False,
    )
    HASH_FILE.write_text(sources_hash() + "\n")
    print(f"built {NAME} in {BUILD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
