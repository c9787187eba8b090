"""A draft head's directory: saved and loaded back identical; a missing, misshapen or unknown tensor is one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from corral.errors import ModelLoadError
from corral.models.draft_head import load_draft_head, save_draft_head
from tests.spec_decode.test_distribution import random_head


def test_a_saved_head_loads_back_identical(tmp_path):
    head = random_head(16, [7, 3, 0], vocab_size=20)
    save_draft_head(head, tmp_path)
    loaded = load_draft_head(tmp_path)
    assert loaded.config == head.config
    assert loaded.head_token_ids.tolist() == [7, 3, 0]
    features, embeddings = torch.randn(4, 16), torch.randn(4, 16)
    for got, want in zip(loaded(features, embeddings), head(features, embeddings), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == (4, 3)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: w.pop("down_proj.weight"), "missing tensor 'down_proj.weight'"),
        (lambda w: w.update({"fc.weight": torch.zeros(16, 16)}), r"'fc.weight' has shape \(16, 16\), expected \(16, 32\)"),
        (lambda w: w.update({"extra.weight": torch.zeros(1)}), "unexpected tensor 'extra.weight'"),
        (lambda w: w.update({"lm_head.token_ids": torch.tensor([7, 7, 0])}), "repeats a token id"),
        (lambda w: w.update({"lm_head.token_ids": torch.tensor([7, 3, 20])}), "outside the vocabulary"),
    ],
)
def test_a_broken_head_directory_is_refused_in_one_line(tmp_path, edit, message):
    save_draft_head(random_head(16, [7, 3, 0], vocab_size=20), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    edit(weights)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=message) as error:
        load_draft_head(tmp_path)
    assert "\n" not in str(error.value)


def test_a_directory_without_a_head_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CorralDraftHead"], "hidden_size": 16}))
    with pytest.raises(ModelLoadError, match="not a draft head directory"):
        load_draft_head(tmp_path)
