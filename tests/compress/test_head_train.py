"""Training a draft head on the target's features (``compress/distill/head_*.py``, ``corral distill
--draft-head-for``) on the tiny random teacher: the features are the dense forward's, the loss unrolls the head on
its own predictions and falls, a seed fixes the head, acceptance is 1 exactly when the head's distribution is the
target's, the written head loads with its special ids in, and flags the mode would not read are refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from corral.cli.main import main
from corral.compress.distill.draft import rank_head_ids
from corral.compress.distill.head_data import SampledSequences, split_heldout, target_features
from corral.compress.distill.head_eval import acceptance
from corral.compress.distill.head_prompts import builtin_user_messages
from corral.compress.distill.head_train import HeadTrainConfig, head_loss, init_draft_head, train_head
from corral.compress.distill.model import load_model
from corral.models.draft_head import DraftHeadConfig, load_draft_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STOP = 0  # the tiny tokenizer's <|endoftext|>
BENCHMARK_STORIES = ("a dragon who learns to paint", "a lighthouse keeper and a lost whale", "a robot that collects rain",
                     "two rival bakers in a small town", "a map that redraws itself", "the last train of the night",
                     "a garden on the moon", "a clock that runs backwards")


def _setup(tiny_dirs, seed: int = 0, head_size: int = 24):
    """The tiny teacher, the features of four random sequences (prompts of 5 tokens) and a fresh head."""
    target = load_model(str(tiny_dirs["teacher"]))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, target.config.vocab_size, (4, 20), generator=generator).tolist()
    data = target_features(target.forward(), SampledSequences(ids, [5] * 4), {STOP})
    embed = target.weights["model.embed_tokens.weight"]
    head_ids = rank_head_ids(data.token_ids, target.config.vocab_size, head_size, {STOP})
    config = DraftHeadConfig(target.config.hidden_size, 16, head_size, target.config.vocab_size)
    head = init_draft_head(config, head_ids, embed[head_ids], seed=0)
    return target, data, embed, head


def test_features_are_the_hidden_states_from_the_last_prompt_token_and_a_final_stop_is_cut(tiny_dirs):
    target = load_model(str(tiny_dirs["teacher"]))
    forward = target.forward()
    sequences = SampledSequences([[7, 8, 9, 10, 11, 12], [20, 21, 22, 23, STOP]], [3, 2])
    data = target_features(forward, sequences, {STOP})
    assert data.sequence_ends.tolist() == [4, 7]
    assert data.token_ids.tolist() == [9, 10, 11, 12, 21, 22, 23]  # the reply's stop token is gone
    torch.testing.assert_close(data.features[:4], forward.hidden_states(torch.tensor([[7, 8, 9, 10, 11, 12]]))[0, 2:])
    torch.testing.assert_close(data.features[4:], forward.hidden_states(torch.tensor([[20, 21, 22, 23]]))[0, 1:])
    assert data.rows(2).tolist() == [0, 1, 4]  # windows of 2 steps stay inside their sequence
    train, heldout = split_heldout(20, 0.1, seed=3)
    assert len(heldout) == 2 and sorted(train + heldout) == list(range(20))
    assert (train, heldout) == split_heldout(20, 0.1, seed=3) and heldout != split_heldout(20, 0.1, seed=4)[1]


def test_the_loss_unrolls_on_predicted_features_and_true_tokens(tiny_dirs):
    target, data, embed, head = _setup(tiny_dirs)
    with torch.no_grad():  # a head that changes its input, so a true and a predicted feature differ
        head.down_proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    rows = data.rows(2)[:5]
    target_rows = embed[head.head_token_ids]
    got = head_loss(head, embed, target_rows, data, rows, depth=2, feature_loss_weight=0.5)
    expected, features = 0.0, data.features[rows]
    for step in (1, 2):
        features, logits = head(features, embed[data.token_ids[rows + step]])
        true = data.features[rows + step]
        target_logp = (true @ target_rows.T).log_softmax(-1)
        kl = F.kl_div(logits.log_softmax(-1), target_logp, log_target=True, reduction="batchmean")
        expected = expected + kl + 0.5 * F.smooth_l1_loss(features, true)
    torch.testing.assert_close(got, expected)


def test_the_loss_falls_on_a_fixed_batch(tiny_dirs):
    _, data, embed, head = _setup(tiny_dirs)
    num_rows = len(data.rows(2))
    config = HeadTrainConfig(head_size=24, depth=2, rows_per_step=num_rows, steps=40, learning_rate=1e-2,
                             warmup_steps=2)
    losses = train_head(head, data, embed, embed[head.head_token_ids], config)
    assert len(losses) == 40 and losses[-1] < 0.6 * losses[0], losses


def test_a_seed_fixes_the_head(tiny_dirs):
    def trained(seed: int):
        _, data, embed, head = _setup(tiny_dirs)
        config = HeadTrainConfig(head_size=24, depth=2, rows_per_step=8, steps=6, learning_rate=1e-2, seed=seed)
        train_head(head, data, embed, embed[head.head_token_ids], config)
        return head.tensors()

    first, again, other = trained(0), trained(0), trained(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])  # the rows' order follows the seed


@pytest.mark.parametrize("temperature,top_p", [(0.8, 0.95), (1.0, 1.0), (0.0, 1.0), (0.7, 0.5)])
def test_acceptance_is_one_exactly_when_the_heads_distribution_is_the_targets(temperature, top_p):
    generator = torch.Generator().manual_seed(0)
    target_logits = 2 * torch.randn(4, 10, generator=generator)
    every_id = torch.randperm(10, generator=generator)
    same = acceptance(target_logits, target_logits[:, every_id], every_id, temperature, top_p)
    torch.testing.assert_close(same, torch.ones(4))
    other = acceptance(target_logits, target_logits[:, every_id].flip(-1), every_id, temperature, top_p)
    assert (other < 1 - 1e-3).all()
    if temperature > 0 and top_p == 1.0:  # the target's mass on ids outside a 6-id head is never accepted
        head_ids = every_id[:6]
        outside = torch.softmax(target_logits / temperature, -1)[:, every_id[6:]].sum(-1)
        partial = acceptance(target_logits, target_logits[:, head_ids], head_ids, temperature, top_p)
        assert (partial < 1 - 1e-3).all() and (partial <= 1 - outside + 1e-6).all()


def test_acceptance_by_hand_after_temperature_and_nucleus():
    # temperature 0.5 doubles the logits: p' = softmax([0, 2]), q' = softmax([2, 0]), sum min = 2 / (1 + e^2)
    two = torch.tensor([0, 1])
    got = acceptance(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), two, 0.5, 1.0).item()
    assert got == pytest.approx(2 / (1 + torch.e ** 2))
    # the target keeps only id 3 at top-p 0.5; a head over ids {3, 5} with the same logits keeps it too
    target_logits = torch.tensor([[3.0, 3.0, 3.0, 6.0, 3.0, 4.0]])
    head_ids = torch.tensor([5, 3])
    assert acceptance(target_logits, target_logits[:, head_ids], head_ids, 1.0, 0.5).item() == pytest.approx(1.0)
    assert acceptance(target_logits, target_logits[:, head_ids], head_ids, 1.0, 1.0).item() < 0.9


def test_builtin_prompts_are_varied_and_leave_the_benchmark_out():
    messages = builtin_user_messages()
    assert 200 <= len(messages) == len(set(messages)) and messages == builtin_user_messages()
    for kind in ("story", "Explain", "List", "email", "Python function", "Summarize", "pros and cons"):
        assert any(kind in m for m in messages), kind
    assert sum("story" in m or "poem" in m for m in messages) < len(messages) / 2
    text = " ".join(messages).lower()
    for story in BENCHMARK_STORIES:
        assert story not in text
    for word in ("dragon", "lighthouse", "whale", "robot", "bakers", "map", "train", "moon", "clock", "rain"):
        assert not re.search(rf"\b{word}\b", text), word


def _chat_target(tiny_dirs, tmp_path: Path) -> Path:
    """The tiny teacher with a chat template that never writes its end-of-text token."""
    target = tmp_path / "chat-target"
    shutil.copytree(tiny_dirs["teacher"], target)
    (target / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    return target


def test_draft_head_for_writes_a_head_that_loads_with_its_special_ids(tiny_dirs, tmp_path, capsys):
    target, out = _chat_target(tiny_dirs, tmp_path), tmp_path / "head"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("return x plus 1\nthe quick brown fox\ndef step\nx plus 2\n")
    args = ["distill", "--draft-head-for", str(target), "--teacher-prompts", str(prompts), "--samples", "10",
            "--sample-tokens", "16", "--head-vocab", "8", "--head-intermediate", "16", "--depth", "2", "--steps", "3"]
    assert main([*args, "--out", str(out), "--output-json", str(tmp_path / "r.json")]) == 0
    head = load_draft_head(out)
    assert main([*args, "--out", str(tmp_path / "again")]) == 0  # sampling, ranking and training all seeded
    again = load_draft_head(tmp_path / "again")
    assert torch.equal(again.head_token_ids, head.head_token_ids)
    assert all(torch.equal(again.tensors()[name], tensor) for name, tensor in head.tensors().items())
    assert head.config == DraftHeadConfig(32, 16, 8, 320, 1e-5)
    assert STOP in head.head_token_ids.tolist()
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["steps"] == 3 and report["num_heldout_sequences"] == 1 and report["num_train_sequences"] == 9
    assert len(report["heldout"]["acceptance"]) == 2 and all(0 <= a <= 1 for a in report["heldout"]["acceptance"])
    captured = capsys.readouterr()
    assert "held-out acceptance" in captured.out and '"method": "draft_head"' in captured.out
    assert "rows/s" in captured.err


@pytest.mark.parametrize("extra", [["--student", "s"], ["--teacher", "t"], ["--layers", "1"], ["--draft-vocab", "8"],
                                   ["--draft-for"], ["--sequence-length", "256"], ["--resume"], ["--data", "x.txt"],
                                   ["--teacher-samples", "2"], ["--top-k", "64"], ["--dtype", "float32"]])
def test_draft_head_for_refuses_the_flags_it_would_not_read(tmp_path, capsys, extra):
    # a target that is not there: a flag let through fails on it instead, without the flag's name
    target = str(tmp_path / "no-target")
    assert main(["distill", "--draft-head-for", target, "--out", str(tmp_path / "head"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert extra[0] in err and "--draft-head-for" in err and "\n" not in err, err


@pytest.mark.parametrize("extra", [["--samples", "4"], ["--depth", "2"], ["--head-vocab", "8"], ["--epochs", "1"]])
def test_head_flags_are_refused_without_draft_head_for(tmp_path, capsys, extra):
    target = str(tmp_path / "no-target")  # a flag let through fails on it instead, without the flag's name
    assert main(["distill", "--draft-for", target, "--layers", "1", "--out", str(tmp_path / "d"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert extra[0] in err and "\n" not in err, err


@pytest.mark.parametrize("extra,expected", [(["--samples", "1"], "--samples must be >= 2"),
                                            (["--teacher-prompts", "none.txt"], "no such file"),
                                            (["--depth", "0"], "depth must be >= 1"),
                                            (["--sample-top-p", "0"], "top_p"),
                                            (["--epochs", "1", "--steps", "4"], "--epochs and --steps both")])
def test_draft_head_for_answers_bad_values_with_one_line(tmp_path, capsys, extra, expected):
    target = str(tmp_path / "no-target")
    assert main(["distill", "--draft-head-for", target, "--out", str(tmp_path / "head"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err
