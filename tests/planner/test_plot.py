"""`corral plan --plot FILE`: a PNG of throughput, TPOT and TTFT against batch size with the SLO lines, and a
one-line refusal naming the extra when matplotlib is missing. matplotlib is installed here: if it is not,
the first test fails (it must not skip)."""

from __future__ import annotations

import builtins

import pytest

from corral.cli.main import main
from corral.errors import ConfigError
from corral.planner.plan import PlanRequest, build_plan
from corral.planner.plot import MAX_PLOTTED_BATCHES, plotted_batches, write_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_plot_is_written(tmp_path):
    path = tmp_path / "plan.png"
    write_plot(build_plan(PlanRequest(slo_tpot_ms=60)), str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_batches_are_thinned_but_keep_both_ends():
    assert plotted_batches(5) == [1, 2, 3, 4, 5]
    many = plotted_batches(256)
    assert many[0] == 1 and many[-1] == 256 and len(many) <= MAX_PLOTTED_BATCHES + 1 and many == sorted(set(many))


def test_without_matplotlib_it_is_refused_naming_the_extra(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"corral\[bench\]"):
        write_plot(build_plan(PlanRequest()), str(tmp_path / "x.png"))
    monkeypatch.setenv("CORRAL_CALIBRATION", str(tmp_path / "none.json"))
    assert main(["plan", "--plot", str(tmp_path / "y.png")]) == 1
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "y.png").exists()
    assert main(["plan", "--recommend", "--plot", str(tmp_path / "z.png")]) == 1
    assert "--plot draws one plan" in capsys.readouterr().err
