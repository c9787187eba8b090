"""A reduced LM head (a draft model's): logits over only the kept ids, equal to the full head's there and -inf
elsewhere, tied (the embedding's rows) or untied (only the kept rows stored); saved and loaded as an HF directory;
a malformed id list refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corral.errors import ModelLoadError
from corral.loader import load_checkpoint, save_hf_dir
from corral.models.calibration import sequence_logits
from corral.models.llama import LlamaForCausalLM
from corral.models.loading import load_model
from corral.models.spec import ModelConfig
from corral.quantization.int8 import Int8Method, fbgemm_available
from tests.conftest import tiny_weights

FULL = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                   tie_word_embeddings=True)
KEPT = torch.tensor([7, 3, 60, 0, 12, 41, 5, 33, 2, 19])  # most frequent first: not sorted by id
TOKENS = [1, 7, 3, 9, 60, 22, 5, 5, 8]


def reduced(full_weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The same weights with the head cut to the kept ids (only the kept rows stored when untied)."""
    weights = dict(full_weights)
    if not config.tie_word_embeddings:
        weights["lm_head.weight"] = full_weights["lm_head.weight"][KEPT].clone()
    weights["lm_head.token_ids"] = KEPT.clone()
    return weights


def build(config: ModelConfig, weights: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    model.load_weights(weights)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_reduced_head_logits_are_the_full_heads_at_the_kept_ids(tied):
    full_config = dataclasses.replace(FULL, tie_word_embeddings=tied)
    config = dataclasses.replace(full_config, draft_vocab_size=len(KEPT))
    weights = tiny_weights(full_config)
    full, draft = build(full_config, weights), build(config, reduced(weights, config))
    with torch.no_grad():
        want = sequence_logits(full, TOKENS)  # [tokens, vocab]
        got = sequence_logits(draft, TOKENS)
        head = draft.compute_head_logits(draft.model.norm(torch.randn(3, 32)))
    assert head.shape == (3, len(KEPT))
    torch.testing.assert_close(got[:, KEPT], want[:, KEPT])
    outside = torch.ones(FULL.vocab_size, dtype=torch.bool)
    outside[KEPT] = False
    assert torch.isneginf(got[:, outside]).all()  # the draft gives every other token probability 0
    assert torch.equal(draft.head_token_ids, KEPT)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_reduced_head_checkpoint_round_trips(tmp_path, tied):
    config = dataclasses.replace(FULL, tie_word_embeddings=tied, draft_vocab_size=len(KEPT))
    full_weights = tiny_weights(dataclasses.replace(config, draft_vocab_size=None))
    save_hf_dir(tmp_path, config, reduced(full_weights, config))
    assert '"corral_draft_vocab_size": 10' in (tmp_path / "config.json").read_text()
    loaded_config, loaded = load_checkpoint(str(tmp_path))
    assert loaded_config == config and torch.equal(loaded["lm_head.token_ids"], KEPT)
    assert ("lm_head.weight" in loaded) == (not tied)  # a tied head stores no rows of its own
    model = load_model(loaded_config, loaded, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(sequence_logits(model, TOKENS), sequence_logits(build(config, loaded), TOKENS))


@pytest.mark.skipif(not fbgemm_available(), reason="int8 needs fbgemm")
def test_a_quantized_draft_packs_only_the_kept_rows_of_a_tied_head():
    config = dataclasses.replace(FULL, draft_vocab_size=len(KEPT))
    weights = reduced(tiny_weights(FULL), config)
    model = load_model(config, weights, torch.float32, torch.device("cpu"), Int8Method(), TOKENS * 4)
    assert model.lm_head.packed is not None and model.lm_head.out_features == len(KEPT)
    with torch.no_grad():
        logits = sequence_logits(model, TOKENS)
        exact = sequence_logits(build(config, weights), TOKENS)
    assert (logits[:, KEPT].argmax(-1) == exact[:, KEPT].argmax(-1)).float().mean() > 0.7


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([7, 3, 7, 0, 12, 41, 5, 33, 2, 19]), "repeats a token id"),
    (torch.tensor([7, 3, 64, 0, 12, 41, 5, 33, 2, 19]), "outside the vocabulary"),
    (KEPT.float(), "integer token ids"),
    (None, "missing tensor 'lm_head.token_ids'"),
])
def test_a_malformed_id_list_is_refused(ids, message):
    config = dataclasses.replace(FULL, draft_vocab_size=len(KEPT))
    weights = reduced(tiny_weights(FULL), config)
    if ids is None:
        del weights["lm_head.token_ids"]
    else:
        weights["lm_head.token_ids"] = ids
    with pytest.raises(ModelLoadError, match=message):
        build(config, weights)
