"""Shared by the bench scripts: the two offline workloads of shared/MACHINE.md, so numbers compare with the
peers' table, and ``provenance()``, the host, date and command every JSON under bench/results/ records."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")

SENTENCE = (
    "The history of science shows that careful measurement and honest reporting move knowledge forward "
    "faster than any single brilliant idea."
)

TOPICS = [
    "volcanoes", "the printing press", "honeybees", "tidal energy", "the Roman roads", "jazz", "glaciers",
    "bread baking", "the immune system", "lighthouses", "chess openings", "coral reefs", "the telegraph",
    "desert plants", "solar eclipses", "paper making",
]


def workload_a(num_prompts: int = 32) -> list[str]:
    """Raw prompts of 31 to 94 tokens."""
    return [
        f"Write a detailed essay about topic number {i}: " + " ".join([SENTENCE] * (i % 4 + 1))
        for i in range(num_prompts)
    ]


def workload_b(num_prompts: int = 32) -> list[list[dict[str, str]]]:
    """Chat conversations of roughly 50 to 300 tokens once templated."""
    conversations = []
    for i in range(num_prompts):
        topic = TOPICS[i % len(TOPICS)]
        context = " ".join([SENTENCE] * (i % 8))
        conversations.append(
            [{"role": "user", "content": f"{context} Please explain {topic} to a curious student, in depth."}]
        )
    return conversations


def provenance() -> dict[str, Any]:
    """``{"host", "date", "command"}`` for a results JSON: the CPU model and the SIMD flags that pick corral's
    paths (docs/performance.md, "The hosts"), the UTC time, this process's argv and the checkout it ran."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "host": {"cpu": model, "simd_flags": [f for f in SIMD_FLAGS if f in flags], "machine": platform.machine(),
                 "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "torch": torch_version, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "commit": commit,
    }
