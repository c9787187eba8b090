"""``corral distill --draft-for T``: a draft cut from the target (its layers of highest block influence) with an
LM head over the most frequent ids, distilled toward the target renormalized over those ids, written as a
directory the draft-model proposer takes; greedy output with it is plain decoding's. Bad input is one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from corral import LLM, SamplingParams
from corral.cli.main import main
from corral.compress.distill.draft import cut_target, rank_head_ids, with_head
from corral.compress.distill.model import DenseModel, load_model
from corral.loader import load_checkpoint, load_tokenizer
from tests.compress.distill_models import FAST, TEXT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _draft(dirs: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["distill", "--draft-for", str(dirs["teacher"]), "--out", str(out), "--data", str(dirs["text"]),
                 "--heldout-data", str(dirs["heldout"]), *FAST, *extra])


def test_head_ids_are_ranked_by_frequency_with_the_special_ids_in():
    windows = torch.tensor([[5, 5, 5, 5, 2, 9], [9, 9, 9, 9, 2, 7]])
    assert rank_head_ids(windows, 12, 3, always=()).tolist() == [9, 5, 2]
    assert rank_head_ids(windows, 12, 4, always=()).tolist() == [9, 5, 2, 7]
    assert rank_head_ids(windows, 12, 3, always=[11]).tolist() == [11, 9, 5]  # EOS never sampled: still in
    assert rank_head_ids(windows, 12, 6, always=()).tolist() == [9, 5, 2, 7, 0, 1]  # unseen ids by id


def test_the_draft_is_the_targets_layers_and_rows_and_its_teacher_is_renormalized(tiny_dirs):
    teacher = load_model(str(tiny_dirs["teacher"]))
    head = torch.tensor([17, 3, 0, 250, 42])
    window = torch.tensor([[1, 17, 3, 99, 250, 250, 7]])
    view = with_head(teacher, head)
    full = teacher.logits(window, torch.float32)
    torch.testing.assert_close(view.logits(window, torch.float32), full[..., head])  # log_softmax renormalizes
    same = cut_target(teacher, [0, 1], head)
    torch.testing.assert_close(same.logits(window, torch.float32), full[..., head])
    first = cut_target(teacher, [1], head)
    assert first.config.num_hidden_layers == 1 and first.config.draft_vocab_size == 5
    assert torch.equal(first.weights["model.layers.0.mlp.up_proj.weight"],
                       teacher.weights["model.layers.1.mlp.up_proj.weight"])
    untied = DenseModel(replace(teacher.config, tie_word_embeddings=False),
                        {**teacher.weights, "lm_head.weight": torch.randn(teacher.config.vocab_size, 32)})
    torch.testing.assert_close(cut_target(untied, [0, 1], head).logits(window, torch.float32),
                               untied.logits(window, torch.float32)[..., head])
    assert cut_target(untied, [1], head).weights["lm_head.weight"].shape == (5, 32)  # only the kept rows
    loss = first.logits(window, torch.float32).logsumexp(-1).sum()
    loss.backward()  # the tied head's gradient reaches the embedding rows of its ids
    grad = first.weights["model.embed_tokens.weight"].grad
    assert grad[head].abs().sum() > 0 and grad[[5, 6, 8]].abs().sum() == 0


def test_draft_for_writes_a_draft_that_speculates_losslessly(tiny_dirs, tmp_path):
    out = tmp_path / "draft"
    assert _draft(tiny_dirs, out, "--layers", "1", "--draft-vocab", "48", "--teacher-samples", "2",
                  "--output-json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["draft_vocab_size"] == 48 and len(report["draft_layers"]) == 1
    assert 0.5 < report["head_coverage"] < 1 and report["num_sampled_windows"] >= 1
    assert report["student_after"]["num_tokens"] < 2 * 31  # held-out targets outside the head are not scored
    config, weights = load_checkpoint(str(out))
    assert config.num_hidden_layers == 1 and config.draft_vocab_size == 48 and "lm_head.weight" not in weights
    assert 0 in weights["lm_head.token_ids"].tolist()  # the EOS is always in the head
    assert load_tokenizer(str(out)).encode(TEXT[:100]) == load_tokenizer(str(tiny_dirs["teacher"])).encode(TEXT[:100])

    prompts = [TEXT[:40], TEXT[300:330]]
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    common = dict(model=str(tiny_dirs["teacher"]), quantization="none", max_model_len=128)
    plain = LLM(**common).generate(prompts, greedy, use_tqdm=False)
    llm = LLM(**common, speculative_config={"method": "draft_model", "model": str(out),
                                            "num_speculative_tokens": 3, "quantization": "none"})
    assert llm.engine.core.runner.proposer.head_token_ids.tolist() == weights["lm_head.token_ids"].tolist()
    speculative = llm.generate(prompts, greedy, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in speculative] == [o.outputs[0].token_ids for o in plain]
    assert llm.engine.core.scheduler.spec_decode_stats.num_draft_tokens > 0


def test_a_stopped_draft_run_resumes_to_the_same_draft(tiny_dirs, tmp_path):
    args = ["--layers", "1", "--draft-vocab", "48", "--teacher-samples", "0"]
    assert _draft(tiny_dirs, tmp_path / "whole", *args) == 0
    assert _draft(tiny_dirs, tmp_path / "resumed", *args, "--stop-after", "1") == 0
    assert _draft(tiny_dirs, tmp_path / "resumed", *args, "--resume") == 0  # the draft is cut again, then restored
    _, whole = load_checkpoint(str(tmp_path / "whole"))
    _, resumed = load_checkpoint(str(tmp_path / "resumed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


@pytest.mark.parametrize("extra, expected", [
    (["--layers", "3", "--draft-vocab", "64"], "exceeds the target's 2 layers"),
    (["--layers", "1", "--draft-vocab", "100000"], "exceeds the vocabulary"),
    (["--draft-vocab", "64"], "--draft-for TARGET with --layers N"),
    (["--layers", "1", "--teacher", "x"], "leave out --teacher"),
    (["--layers", "0"], "--layers must be >= 1"),
], ids=["layers", "vocab", "no-layers", "teacher", "zero-layers"])
def test_bad_draft_input_is_one_line(tiny_dirs, tmp_path, capsys, extra, expected):
    assert _draft(tiny_dirs, tmp_path / "out", "--teacher-samples", "0", *extra) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("corral distill: error:") and "\n" not in err and expected in err


def test_layers_without_draft_for_is_refused(tiny_dirs, tmp_path, capsys):
    assert main(["distill", "--student", str(tiny_dirs["student"]), "--out", str(tmp_path / "o"),
                 "--layers", "1"]) == 1
    assert "give --draft-for TARGET" in capsys.readouterr().err
