"""``corral eval``: perplexity (equal to HF transformers' on the same tokens) and agreement on the held-out
docstrings, as JSON; bad input is one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from corral.cli.main import main
from corral.quantization.corpus import stdlib_docstrings
from corral.text.tokenizer import Tokenizer


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def hf_model(hf_default_model):
    return hf_default_model


def heldout_ids(default_model: str, num_tokens: int) -> list[int]:
    """The first ``num_tokens`` token ids of the held-out docstrings, as `corral eval` scores them."""
    return Tokenizer.from_gguf(default_model).encode(stdlib_docstrings("heldout"))[:num_tokens]


def test_perplexity_equals_hf_transformers_on_one_window(tmp_path, hf_model, default_model):
    """Guards the perplexity: exp of HF's mean loss (labels = the same 256 token ids), to 1e-4 relative."""
    out = tmp_path / "ppl.json"
    result = corral("eval", "perplexity", "--quantization", "none", "--tokens", "256", "--window", "256",
                    "--output-json", str(out))
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert (written["num_tokens"], written["num_windows"]) == (255, 1)
    ids = torch.tensor([heldout_ids(default_model, 256)])
    with torch.no_grad():
        loss = hf_model(ids, labels=ids).loss.item()
    # measured: 17.935284 against HF's 17.935298 (7.5e-7 relative)
    assert math.isclose(written["perplexity"], math.exp(loss), rel_tol=1e-4), (written["perplexity"], math.exp(loss))


def test_perplexity_writes_json_and_scores_each_target_once_across_windows(tmp_path, hf_model, default_model):
    """Guards the sliding windows: two windows of 64 every 32 tokens score targets 1..63 in the first and
    64..95 in the second (with 32 tokens of context), as HF's per-token losses on those windows give."""
    out = tmp_path / "ppl.json"
    result = corral("eval", "perplexity", "--quantization", "none", "--tokens", "96", "--window", "64",
                    "--stride", "32", "--output-json", str(out))
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert written == json.loads(result.stdout)
    assert written["num_tokens"] == 95 and written["num_windows"] == 2  # every target after the first, once
    ids = torch.tensor(heldout_ids(default_model, 96))
    with torch.no_grad():
        first, second = (hf_model(window[None]).logits[0, :-1] for window in (ids[:64], ids[32:96]))
    losses = torch.cat([F.cross_entropy(first, ids[1:64], reduction="none"),
                        F.cross_entropy(second, ids[33:96], reduction="none")[-32:]])
    expected = losses.mean().exp().item()
    # measured: 23.986662 against HF's 23.986683 (8.5e-7 relative)
    assert math.isclose(written["perplexity"], expected, rel_tol=1e-4), (written["perplexity"], expected)


def test_agreement_with_itself_is_total_and_with_a_quantized_path_high(tmp_path):
    result = corral("eval", "agreement", "--quantization", "none", "--tokens", "64", "--window", "64")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["agreement"] == 1.0
    result = corral("eval", "agreement", "--quantization", "gguf", "--kv-cache-dtype", "int8", "--tokens", "128",
                    "--window", "64")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["num_tokens"] == 127 and 0.7 < report["agreement"] < 1.0


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    # In this process: the error path is main()'s, and a subprocess per case would cost a torch import each.
    assert main(["eval", "perplexity", "--dataset", str(tmp_path / "missing.txt")]) == 1
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and "dataset" in stderr
    assert main(["eval", "perplexity", "--window", "16", "--stride", "32"]) == 1
    assert "stride" in capsys.readouterr().err
    assert main(["eval", "perplexity", "--quantization", "none", "--window", "100000"]) == 1
    assert "exceeds the model's context" in capsys.readouterr().err
