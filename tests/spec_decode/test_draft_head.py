"""The draft-head proposer through the whole engine: greedy output identical to plain decoding (with penalties,
float and int8 heads), the feature it drafts from is exactly the target's hidden row behind each request's last
token, and every KV block comes back; loading errors are one line. The sampled distribution's exactness is in
test_distribution.py."""

from __future__ import annotations

import pytest
import torch

from corral.engine.core import EngineCore
from corral.errors import ConfigError
from corral.models.calibration import DenseSequence
from corral.quantization.blockwise import BlockMethod
from corral.quantization.int8 import Int8Method, fbgemm_available
from corral.spec_decode.draft_head import DraftHeadProposer, check_head_fits
from tests.spec_decode.test_distribution import (
    CPU,
    NUM_BLOCKS,
    random_head,
    random_model,
)
from tests.spec_decode.test_draft_reduced_head import SEED, TARGET, VOCAB
from tests.spec_decode.test_draft_reduced_head import generate as generate_reduced


class CheckedFeatures(DraftHeadProposer):
    """Before each proposal, compares the feature it holds for each request with the target's final hidden
    state computed afresh over the request's tokens (the row that produced the last one)."""

    def __init__(self, target, *args):
        super().__init__(*args)
        self.target, self.checked = target, 0

    def propose(self, requests, max_num_tokens):
        for request in requests:
            known = request.all_token_ids[:-1]
            sequence = DenseSequence(self.target, known)
            hidden = sequence.embed()
            for index in range(len(self.target.model.layers)):
                hidden = sequence.layer(index, hidden)
            expected = self.target.model.norm(hidden)[-1]
            torch.testing.assert_close(self._features[request.request_id], expected, atol=1e-4, rtol=1e-4)
            self.checked += 1
        return super().propose(requests, max_num_tokens)


def generate(target, proposer, num_drafts: int) -> tuple[list[list[int]], EngineCore]:
    tokens, core = generate_reduced(target, proposer, num_drafts)
    assert core.kv_manager.num_free_blocks == NUM_BLOCKS
    return tokens, core


def head_ids_of(plain: list[list[int]], size: int) -> list[int]:
    counts = torch.bincount(torch.tensor([t for row in plain for t in row]), minlength=VOCAB)
    return counts.argsort(descending=True)[:size].tolist()


@pytest.mark.parametrize("quantized", [None, "int8", "int4"])
def test_greedy_output_with_a_draft_head_is_plain_decoding(quantized):
    if quantized == "int8" and not fbgemm_available():
        pytest.skip("int8 linears need fbgemm in this torch build")
    target = random_model(TARGET, SEED)
    plain, _ = generate(target, None, 0)
    head = random_head(TARGET.hidden_size, head_ids_of(plain, 24), VOCAB)
    if quantized is not None:
        head.quantize_(Int8Method() if quantized == "int8" else BlockMethod("int4", linear_bits=4))
    proposer = DraftHeadProposer(head, target.model.embed_tokens, VOCAB, CPU)
    speculative, core = generate(target, proposer, 3)
    assert speculative == plain
    stats = core.scheduler.spec_decode_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert not proposer._features  # every finished request forgotten


def test_the_head_drafts_from_the_hidden_row_behind_the_last_token():
    """After a plain step, a verification that kept some drafts, or one that kept none, the feature is the
    target's final hidden state at the position before the last token."""
    target = random_model(TARGET, SEED)
    plain, _ = generate(target, None, 0)
    # a head that scores well enough that some drafts are kept and some are not
    proposer = CheckedFeatures(target, random_head(TARGET.hidden_size, head_ids_of(plain, 24), VOCAB), target.model.embed_tokens,
                               VOCAB, CPU)
    speculative, core = generate(target, proposer, 3)
    assert speculative == plain
    assert proposer.checked > 100
    stats = core.scheduler.spec_decode_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


def test_a_head_for_another_shape_is_refused():
    head = random_head(16, [0, 1], VOCAB)
    with pytest.raises(ConfigError, match="reads hidden states of size 16 over 64 tokens; the target has 32 over 64"):
        check_head_fits(head, TARGET, "dir")


def test_a_smoothed_target_hands_the_head_the_features_it_was_trained_on(tmp_path):
    """quantization int8 divides SmoothQuant scales out of the target's final norm: the proposer folds them
    back into the head, which then drafts exactly as the float head does from the float features."""
    from dataclasses import replace

    from corral.models.draft_head import save_draft_head
    from corral.spec_decode.draft_head import draft_head_proposer

    config = replace(TARGET, tie_word_embeddings=False)
    target = random_model(config, SEED)
    head = random_head(config.hidden_size, list(range(24)), VOCAB)
    save_draft_head(head, tmp_path)
    features = target.model.norm(torch.randn(5, config.hidden_size))
    target.quantize_lm_head_(Int8Method() if fbgemm_available() else BlockMethod("int4", 4),
                             input_absmax=torch.rand(config.hidden_size) * 10 + 0.1)
    scales = target.final_hidden_scales
    assert scales is not None and not torch.allclose(scales, torch.ones_like(scales))
    proposer, _ = draft_head_proposer(str(tmp_path), None, target, config, CPU)
    embeddings = torch.randn(5, config.hidden_size)
    for got, want in zip(proposer.head(features / scales, embeddings), head(features, embeddings), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
