"""`corral plan`: a useful plan with no arguments, JSON, one-line errors, no torch, well under a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def corral_plan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps at 80 columns without a terminal
    return subprocess.run([sys.executable, "-m", "corral.cli.main", "plan", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_without_arguments_it_plans_the_default_model_on_this_machine():
    result = corral_plan()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("SmolLM2-135M-Instruct.Q4_1.gguf", "12,240 bytes (int8)", "96,576,768 bytes", "sequences at once",
                     "TTFT ms", "SLO batch", "per million input tokens", "per million output tokens", "efficiency"):
        assert expected in out, expected


def test_json_has_every_section():
    result = corral_plan("--model", "llama-3.1-8b", "--hardware", "h100", "--rps", "10", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["memory"]["kv_bytes_per_token"] == 131_072 and plan["hardware"]["name"] == "h100-sxm"
    assert plan["slo_batch"]["batch"] >= 1 and plan["replicas"]["replicas_needed"] >= 1
    assert plan["cost"]["per_million_output"] > 0 and plan["batches"]


def test_bad_flags_are_one_line_errors_naming_the_flag():
    for args, flag in ((["--hardware", "tpu"], "--hardware"), (["--format", "q9"], "--format"),
                       (["--prompt-len", "x"], "--prompt-len"), (["--tp", "2"], "--tp")):
        result = corral_plan(*args)
        assert result.returncode == 1 and flag in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_the_lists_print():
    result = corral_plan("--list-hardware", "--list-models")
    assert result.returncode == 0 and "h100-sxm" in result.stdout and "mixtral-8x7b" in result.stdout


def test_importing_the_planner_and_planning_never_imports_torch_or_the_engine():
    code = ("import sys, pkgutil, importlib, corral.planner, corral.cli.plan\n"
            "for m in pkgutil.iter_modules(corral.planner.__path__): importlib.import_module('corral.planner.' + m.name)\n"
            "from corral.planner.plan import PlanRequest, build_plan\n"
            "build_plan(PlanRequest())\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'gguf') or m.startswith(\n"
            "    ('corral.engine', 'corral.loader', 'corral.models', 'corral.runtime', 'corral.layers'))]\n"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_it_answers_well_under_a_second():
    timings = []
    for _ in range(3):  # the best of three: this machine's other processes come and go
        start = time.perf_counter()
        assert corral_plan().returncode == 0
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings
