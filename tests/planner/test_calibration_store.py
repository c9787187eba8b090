"""The calibration file: written per host, applied to the local row of the matching host only, and
`corral plan calibrate` end to end in-process."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from corral.cli.main import main
from corral.errors import ConfigError
from corral.planner.calibration import Factors
from corral.planner.calibration_store import (
    HostIdentity,
    StoredCalibration,
    calibration_for,
    this_host,
    write_calibration,
)
from corral.planner.plan import PlanRequest, build_plan
from corral.planner.roofline import DEFAULT_EFFICIENCY

BENCH_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results", "bench.json")


def stored(host: HostIdentity, bandwidth: float = 0.31, compute: float = 0.27, dtype: str | None = None) -> StoredCalibration:
    dtype = dtype or build_plan(PlanRequest()).compute_dtype
    return StoredCalibration(host, Factors(bandwidth, compute, 0.0015), dtype, "2026-12-07T00:00:00+00:00", "test", "m")


def test_the_entry_applies_to_the_local_row_of_this_host(tmp_path):
    path = str(tmp_path / "cal.json")
    write_calibration(path, stored(this_host()))
    plan = build_plan(PlanRequest(), calibration=calibration_for(path, this_host()))
    assert (plan.efficiency.bandwidth, plan.efficiency.compute, plan.efficiency.step_overhead_s) == (0.31, 0.27, 0.0015)
    assert "calibrated for this host" in plan.calibration
    default = build_plan(PlanRequest())
    assert plan.decode_tokens_per_s_single < default.decode_tokens_per_s_single  # 0.31 < the default 0.6


def test_another_hosts_entry_does_not_apply(tmp_path):
    path = str(tmp_path / "cal.json")
    other = replace(this_host(), cpu_model="Some Other CPU", flags=("avx2", "avx512f"))
    write_calibration(path, stored(other))
    entry, line = calibration_for(path, this_host())
    assert entry is None and "holds no calibration for this host" in line and other.key in line
    plan = build_plan(PlanRequest(), calibration=(entry, line))
    assert plan.efficiency == build_plan(PlanRequest()).efficiency and plan.calibration == line


def test_it_never_applies_to_another_hardware_row_nor_over_a_flag(tmp_path):
    path = str(tmp_path / "cal.json")
    write_calibration(path, stored(this_host()))
    found = calibration_for(path, this_host())
    gpu = build_plan(PlanRequest(model="llama-3.1-8b", hardware="h100"), calibration=found)
    assert gpu.efficiency == DEFAULT_EFFICIENCY["gpu"] and gpu.calibration is None
    flagged = build_plan(PlanRequest(bandwidth_efficiency=0.5), calibration=found)
    assert flagged.efficiency.bandwidth == 0.5 and flagged.efficiency.compute == 0.27


def test_the_compute_factor_holds_for_its_own_dtype_only(tmp_path):
    path = str(tmp_path / "cal.json")
    write_calibration(path, stored(this_host(), dtype="bf16-never"))
    plan = build_plan(PlanRequest(), calibration=calibration_for(path, this_host()))
    assert plan.efficiency.bandwidth == 0.31 and plan.efficiency.compute == 0.6
    assert any("fitted compute efficiency for bf16-never" in n for n in plan.notes)


def test_entries_of_several_hosts_live_side_by_side_and_bad_files_are_refused(tmp_path):
    path = str(tmp_path / "cal.json")
    other = replace(this_host(), cpu_model="Other")
    write_calibration(path, stored(other))
    write_calibration(path, stored(this_host()))
    assert set(json.load(open(path))["hosts"]) == {other.key, this_host().key}
    (tmp_path / "bad.json").write_text('{"version": 9}')
    with pytest.raises(ConfigError, match="not a version-1"):
        calibration_for(str(tmp_path / "bad.json"), this_host())


def test_calibrate_then_plan_through_the_cli(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "cal.json")
    monkeypatch.setenv("CORRAL_CALIBRATION", path)
    assert main(["plan", "calibrate", "--from", BENCH_JSON, "--save-measurements", str(tmp_path / "obs.json")]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and f"wrote {path}" in out.replace("\n", "")
    assert main(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["calibration"].startswith("calibrated for this host")
    assert plan["efficiency"]["bandwidth_source"].startswith("calibrated on this host")
    assert main(["plan", "calibrate", "--from", str(tmp_path / "obs.json"), "--out", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["factors"]["bandwidth"] > 0


@pytest.mark.parametrize("argv, flag", [
    (["plan", "calibrate"], "--from FILE or --run"),
    (["plan", "--from", "x.json"], "--from applies to `corral plan calibrate` only"),
    (["plan", "--run"], "--run applies"),
    (["plan", "calibrate", "--from", "x.json", "--threads", "2"], "--threads applies to --run only"),
    (["plan", "--top", "3"], "--top applies to --recommend only"),
    (["plan", "calibrate", "--from", "x.json", "--hardware", "h100"], "--hardware does not apply to `corral plan calibrate`"),
    (["plan", "calibrate", "--run", "--threads", "0"], "--threads included"),
])
def test_calibrate_flags_are_refused_where_they_do_not_apply(argv, flag, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CORRAL_CALIBRATION", str(tmp_path / "none.json"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert flag in err and err.strip().count("\n") == 0
