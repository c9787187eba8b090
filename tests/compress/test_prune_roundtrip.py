"""``corral prune`` end to end on the tiny model: the directory it writes loads in corral's serving model and
in HF transformers with the logits of the pruned weights, scores are reused, and the CLI refuses what it
cannot do in one line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from corral.cli.main import main
from corral.compress.dense_forward import DenseForward, float_linears
from corral.compress.prune import (
    PruneRequest,
    PruneShape,
    ShapeConstraints,
    count_parameters,
    prune_checkpoint,
)
from corral.loader import load_checkpoint
from corral.models.calibration import sequence_logits
from corral.models.registry import model_class

SMALL_CALIBRATION = {"calibration_tokens": 512, "sequence_length": 256, "search_tokens": 256}
IDS = [(37 * i) % 4000 + 10 for i in range(24)]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, tiny_model_dir) -> str:
    # TINY: 2 layers, hidden 64, FFN 128, 4 query heads in 2 groups
    out = str(tmp_path_factory.mktemp("pruned") / "out")
    constraints = ShapeConstraints(num_hidden_layers=1, intermediate_size=96, num_attention_heads=2, hidden_size=48)
    prune_checkpoint(PruneRequest(tiny_model_dir, out, constraints, **SMALL_CALIBRATION))
    return out


def test_corral_loads_the_pruned_dir_with_its_logits(pruned_dir):
    config, weights = load_checkpoint(pruned_dir)
    assert PruneShape.of(config) == PruneShape(1, 96, 2, 2, 48) and config.head_size == 16
    assert sum(t.numel() for t in weights.values()) == count_parameters(config)
    model = model_class(config)(config).eval()
    model.load_weights(dict(weights))
    expected = DenseForward(config, weights, float_linears(weights))(torch.tensor([IDS]))[0]
    torch.testing.assert_close(sequence_logits(model, IDS), expected, rtol=1e-4, atol=1e-4)
    record = json.load(open(os.path.join(pruned_dir, "prune.json")))
    assert record["shape"]["hidden_size"] == 48 and len(record["kept"]["hidden_channels"]) == 48
    assert os.path.isfile(os.path.join(pruned_dir, "tokenizer.json"))


def test_transformers_loads_the_pruned_dir_with_its_logits(pruned_dir):
    transformers = pytest.importorskip("transformers")
    config, weights = load_checkpoint(pruned_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(pruned_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(torch.tensor([IDS])).logits[0]
    expected = DenseForward(config, weights, float_linears(weights))(torch.tensor([IDS]))[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(pruned_dir)
    assert tokenizer("def f():").input_ids


def test_cli_prunes_to_a_budget_and_reuses_scores(tmp_path, tiny_model_dir, capsys):
    cache = str(tmp_path / "scores")
    common = ["prune", "--model", tiny_model_dir, "--cache-dir", cache, "--calibration-tokens", "512",
              "--sequence-length", "256"]
    original = count_parameters(load_checkpoint(tiny_model_dir)[0])
    budget = original - 20_000
    assert main([*common, "--params", str(budget), "--search-tokens", "256", "--search-top-k", "2",
                 "--search-width-step", "16",
                 "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    config, _ = load_checkpoint(str(tmp_path / "a"))
    assert count_parameters(config) <= budget and "loss" in first and "calibration tokens" in first
    assert main([*common, "--layers", "1", "--out", str(tmp_path / "b")]) == 0
    assert "importance scores from the cache" in capsys.readouterr().out
    assert load_checkpoint(str(tmp_path / "b"))[0].num_hidden_layers == 1


@pytest.mark.parametrize(("arguments", "message"), [
    (["--heads", "3"], "--heads 3: neither a multiple"),
    (["--ffn-size", "4096"], "--ffn-size 4096 is outside 1..128"),
    (["--params", "1000"], "no shape within the search bounds"),
    ([], "nothing to prune"),
    (["--layers", "1", "--search-top-k", "2"], "--search-top-k only apply with --params or --memory-mb"),
])
def test_cli_refuses_impossible_constraints_in_one_line(tmp_path, tiny_model_dir, capsys, arguments, message):
    out = tmp_path / "never"
    assert main(["prune", "--model", tiny_model_dir, "--no-cache", *arguments, "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("corral prune: error:") and message in error and "\n" not in error
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".never")]
