"""``corral eval``: perplexity and agreement on the held-out docstrings, as JSON; bad input is one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_perplexity_writes_json(tmp_path):
    out = tmp_path / "ppl.json"
    result = corral("eval", "perplexity", "--quantization", "none", "--tokens", "96", "--window", "64",
                    "--stride", "32", "--output-json", str(out))
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert written == json.loads(result.stdout)
    assert written["num_tokens"] == 95 and written["num_windows"] == 2  # every target after the first, once
    # a real model on English docstrings: far better than uniform over 49152 tokens, and not perfect
    assert 2 < written["perplexity"] < 100 and math.isfinite(written["perplexity"])


def test_agreement_with_itself_is_total_and_with_a_quantized_path_high(tmp_path):
    result = corral("eval", "agreement", "--quantization", "none", "--tokens", "64", "--window", "64")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["agreement"] == 1.0
    result = corral("eval", "agreement", "--quantization", "gguf", "--kv-cache-dtype", "int8", "--tokens", "128",
                    "--window", "64")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["num_tokens"] == 127 and 0.7 < report["agreement"] < 1.0


def test_bad_input_is_a_one_line_error(tmp_path):
    result = corral("eval", "perplexity", "--dataset", str(tmp_path / "missing.txt"))
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and "dataset" in result.stderr
    result = corral("eval", "perplexity", "--window", "16", "--stride", "32")
    assert result.returncode == 1 and "stride" in result.stderr
    result = corral("eval", "perplexity", "--quantization", "none", "--window", "100000")
    assert result.returncode == 1 and "exceeds the model's context" in result.stderr
