"""``corral distill`` end to end on tiny random models (teacher and student HF directories over a small BPE
tokenizer, so a step takes milliseconds): it writes an HF directory the loader reads, stops and resumes, and
answers bad input with one line; the teacher samples its own sequences through the offline engine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from corral.cli.main import main
from corral.loader import load_checkpoint, load_tokenizer, save_hf_dir
from corral.models.spec import ModelConfig
from tests.conftest import tiny_weights

TEXT = "\n\n".join(f"def step_{i}(x):\n    \"\"\"Return x plus {i}, the quick brown fox.\"\"\"\n    return x + {i}"
                   for i in range(200))
FAST = ["--sources", "none", "--train-tokens", "512", "--heldout-tokens", "64", "--sequence-length", "32",
        "--batch-size", "2", "--grad-accum", "1", "--top-k", "8", "--steps", "3", "--checkpoint-every", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer teacher, a 1-layer student, a student of another vocabulary, and a training text file."""
    root = tmp_path_factory.mktemp("distill")
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    teacher = ModelConfig(architecture="llama", vocab_size=backend.get_vocab_size(), hidden_size=32,
                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                          tie_word_embeddings=True, eos_token_ids=(0,))
    configs = {"teacher": teacher, "student": dataclasses.replace(teacher, num_hidden_layers=1),
               "other-vocab": dataclasses.replace(teacher, num_hidden_layers=1, vocab_size=teacher.vocab_size + 8)}
    dirs = {}
    for seed, (name, config) in enumerate(configs.items()):
        dirs[name] = root / name
        save_hf_dir(dirs[name], config, tiny_weights(config, seed=seed))
        backend.save(str(dirs[name] / "tokenizer.json"))
        (dirs[name] / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    dirs["text"] = root / "train.txt"
    dirs["text"].write_text(TEXT)
    dirs["heldout"] = root / "heldout.txt"
    dirs["heldout"].write_text(TEXT[::-1])
    return dirs


def _distill(dirs: dict[str, Path], out: Path, *extra: str, student: str = "student") -> int:
    return main(["distill", "--teacher", str(dirs["teacher"]), "--student", str(dirs[student]), "--out", str(out),
                 "--data", str(dirs["text"]), "--heldout-data", str(dirs["heldout"]), *FAST, *extra])


def test_distill_writes_an_hf_directory_the_loader_reads(tiny_dirs, tmp_path):
    out = tmp_path / "out"
    assert _distill(tiny_dirs, out, "--teacher-samples", "0", "--output-json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps_taken"] == 3 and report["tokens_seen"] == 3 * 2 * 32
    assert report["student_after"]["perplexity"] > 0 and report["teacher"]["greedy_agreement"] is None
    config, weights = load_checkpoint(str(out))
    student_config, start = load_checkpoint(str(tiny_dirs["student"]))
    assert config == student_config
    assert load_tokenizer(str(out)).encode(TEXT[:200]) == load_tokenizer(str(tiny_dirs["student"])).encode(TEXT[:200])
    checkpoint = torch.load(tmp_path / "out.distill" / "checkpoint.pt", weights_only=True)
    for name, weight in weights.items():
        assert torch.equal(weight, checkpoint["weights"][name]), name
    assert not torch.equal(weights["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"])


def test_stop_then_resume_finishes_the_run_and_refuses_another(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _distill(tiny_dirs, out, "--stop-after", "1", "--teacher-samples", "0") == 0
    assert not out.exists() and (tmp_path / "out.distill" / "checkpoint.pt").exists()
    capsys.readouterr()
    assert _distill(tiny_dirs, out, "--resume", "--lr", "1e-3", "--teacher-samples", "0") == 1
    assert "learning_rate" in capsys.readouterr().err
    assert _distill(tiny_dirs, out, "--teacher-samples", "0") == 1  # no silent restart over an earlier run
    assert "--resume" in capsys.readouterr().err
    assert _distill(tiny_dirs, out, "--resume", "--teacher-samples", "0") == 0
    assert "trained 3/3 steps" in capsys.readouterr().out and out.is_dir()


@pytest.mark.parametrize("case", ["vocab", "missing-student", "existing-out", "bad-source", "missing-data"])
def test_bad_input_is_one_line(tiny_dirs, tmp_path, capsys, case):
    student, out, extra = "student", tmp_path / "out", []
    if case == "vocab":
        student = "other-vocab"
    elif case == "missing-student":
        tiny_dirs = {**tiny_dirs, "student": tmp_path / "nowhere"}
    elif case == "existing-out":
        out.mkdir()
    elif case == "bad-source":
        extra = ["--sources", "stdlib-docstrings,wikipedia"]
    elif case == "missing-data":
        tiny_dirs = {**tiny_dirs, "text": tmp_path / "no-such-file.txt"}
    assert _distill(tiny_dirs, out, "--teacher-samples", "0", *extra, student=student) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("corral distill: error:") and "\n" not in err
    expected = {"vocab": "vocabularies differ", "missing-student": "not an HF model directory",
                "existing-out": "already exists", "bad-source": "wikipedia", "missing-data": "no such file"}[case]
    assert expected in err


def test_the_teacher_samples_through_the_engine(tiny_dirs, tmp_path):
    out = tmp_path / "out"
    assert _distill(tiny_dirs, out, "--teacher-samples", "3", "--output-json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    # 3 samples of 8 prompt + 24 sampled tokens (+ EOS where one ended early) pack into 2 or 3 windows of 32
    assert report["num_sampled_windows"] in (2, 3)
