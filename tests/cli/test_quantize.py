"""``corral quantize`` writes a directory that ``corral serve --model DIR`` serves; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_quantized_directory_is_served(tiny_model_dir, tmp_path, corral_serve):
    out = str(tmp_path / "awq")
    result = corral("quantize", "--model", tiny_model_dir, "--method", "awq-int4", "--group-size", "32",
                    "--calibration-tokens", "256", "--tune-steps", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "round-to-nearest" in result.stdout
    assert "tuned scales and mins for 2 steps" in result.stdout and "16-bit activations" in result.stdout

    base = corral_serve("--model", out, "--kv-cache-memory", str(8 * 1024**2), "--max-model-len", "256",
                        "--activation-bits", "8")
    response = httpx.post(base + "/v1/completions", timeout=60, json={
        "model": "awq", "prompt": "def add(a, b):", "max_tokens": 5, "temperature": 0, "ignore_eos": True,
    })
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5


def test_existing_output_and_bad_group_are_one_line_errors(tiny_model_dir, tmp_path):
    result = corral("quantize", "--model", tiny_model_dir, "--method", "int8", "--out", str(tmp_path))
    assert result.returncode == 1 and "already exists" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    out = str(tmp_path / "g128")
    result = corral("quantize", "--model", tiny_model_dir, "--method", "rtn-int4", "--group-size", "128",
                    "--out", out)
    assert result.returncode == 1 and "group size 128" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not os.path.exists(out)
    result = corral("quantize", "--model", tiny_model_dir, "--method", "gptq-int4", "--tune-steps", "-1",
                    "--out", out)
    assert result.returncode == 1 and "--tune-steps must be >= 0" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not os.path.exists(out)
