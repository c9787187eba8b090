"""The scripts under bench/ (run by hand and by `make bench*`, not by the suite) still import, and none is
named like an installed package: bench/ is on their sys.path, so a `bench/kernels.py` once hid the `kernels`
package that transformers imports, and the GGUF -> HF conversion for vLLM broke."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_shadows_no_installed_package(name):
    assert importlib.util.find_spec(name) is None, f"bench/{name}.py hides the installed package {name!r}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for module in SCRIPTS:  # each script imports its siblings by bare name
        monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.import_module(name)
