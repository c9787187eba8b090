"""The hardware table: every row sourced and dated, the local CPU told apart by its flags."""

from __future__ import annotations

import re

import pytest

from corral.errors import ConfigError
from corral.planner.hardware import HARDWARE, hardware, local_cpu_name


def test_every_row_has_sources_dates_and_a_compute_path():
    for row in HARDWARE.values():
        assert re.search(r"20\d\d", row.spec_source) and re.search(r"20\d\d", row.price_source), row.name
        assert "indicative" in row.price_source or row.kind == "gpu" and "as of" in row.price_source
        assert row.quantized_compute in row.peak_flops
    for row in HARDWARE.values():
        if row.kind == "cpu":
            assert "measured on this project's machine" in row.spec_source


def test_the_local_row_follows_the_cpu_flags():
    assert local_cpu_name(frozenset({"avx2", "amx_int8", "amx_bf16", "avx512_bf16"})) == "cpu-xeon-amx-2vcpu"
    assert local_cpu_name(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "cpu-zen4-2vcpu"
    assert local_cpu_name(frozenset({"avx2", "fma"})) == "cpu-zen3-2vcpu"
    assert hardware(None).name == hardware("local").name == local_cpu_name()


def test_names_and_aliases():
    assert hardware("H100").name == "h100-sxm" and hardware("zen3").name == "cpu-zen3-2vcpu"
    with pytest.raises(ConfigError, match=r"unknown --hardware 'tpu' \(known: local, h100-sxm"):
        hardware("tpu")


def test_a_dtype_the_row_lacks_is_refused_by_name():
    assert hardware("h100-sxm").flops_for("quantized") == hardware("h100-sxm").peak_flops["bf16"]
    with pytest.raises(ConfigError, match="a100-80gb has no fp8 throughput"):
        hardware("a100-80gb").flops_for("fp8")


def test_the_docs_table_lists_every_row():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "planner.md").read_text()
    for name, row in HARDWARE.items():
        assert f"| `{name}` |" in doc, name
        assert f"| {row.price_per_hour:g} |" in doc.split(f"| `{name}` |")[1].split("\n")[0], name


def test_gpu_rows_carry_their_device_to_device_bandwidth():
    # the datasheets' totals count both directions: one direction is half
    assert hardware("h100-sxm").interconnect_bytes_per_s == 450e9
    assert hardware("a100-80gb").interconnect_bytes_per_s == 300e9
    assert hardware("l4").interconnect_bytes_per_s == 32e9
    for row in HARDWARE.values():
        assert (row.interconnect_bytes_per_s > 0) == (row.kind == "gpu"), row.name
        if row.kind == "gpu":
            assert f"{2 * row.interconnect_bytes_per_s / 1e9:g} GB/s" in row.description, row.name
