"""``corral distill`` end to end on tiny random models (teacher and student HF directories over a small BPE
tokenizer, so a step takes milliseconds): it writes an HF directory the loader reads, stops and resumes, and
answers bad input with one line; the teacher samples its own sequences through the offline engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from corral.cli.main import main
from corral.loader import load_checkpoint, load_tokenizer
from tests.compress.distill_models import FAST, TEXT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_the_teacher_answers_chat_prompts_rendered_with_its_template(tiny_dirs, tmp_path, capsys):
    import shutil

    teacher = tmp_path / "chat-teacher"
    shutil.copytree(tiny_dirs["teacher"], teacher)
    (teacher / "chat_template.jinja").write_text(
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("return x plus 1\n\nthe quick brown fox\n")
    dirs = {**tiny_dirs, "teacher": teacher}
    out = tmp_path / "out"
    assert _distill(dirs, out, "--teacher-samples", "2", "--teacher-prompts", str(prompts)) == 0
    prepared = torch.load(tmp_path / "out.distill" / "prepared.pt", weights_only=True)
    tokenizer = load_tokenizer(str(teacher))
    sampled = prepared["train_ids"][prepared["num_text_windows"]:].flatten().tolist()
    rendered = {tuple(tokenizer.encode(f"<|endoftext|>user: {m}\nassistant:", add_special_tokens=False))
                for m in ("return x plus 1", "the quick brown fox")}
    first = next(r for r in rendered if tuple(sampled[: len(r)]) == r)  # the samples start with a rendered prompt
    assert len(sampled) > len(first)

    # refused with one line: no template to render them, no samples to draw them for, no such file
    for extra, expected in ((["--teacher", str(tiny_dirs["teacher"])], "no chat template"),
                            (["--teacher-samples", "0"], "give --teacher-samples > 0"),
                            (["--teacher-prompts", str(tmp_path / "none.txt")], "no such file")):
        capsys.readouterr()
        args = ["--teacher-samples", "2", "--teacher-prompts", str(prompts), *extra]
        assert _distill(dirs, tmp_path / "out2", *args) == 1
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err
