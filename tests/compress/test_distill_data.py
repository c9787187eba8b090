"""Training data: windows are consecutive EOS-joined tokens; teacher prompts are starts of text windows and the
teacher's samples are packed after the text; the local corpus interleaves its sources and reads man pages as text."""

from __future__ import annotations

import pytest
import torch

from corral.compress.distill.config import DistillError
from corral.compress.distill.corpus import _roff_to_text, gather_documents
from corral.compress.distill.data import build_training_data, token_windows


class CharTokenizer:
    """One id per character (ord % 50 + 1), EOS 0: enough of the Tokenizer interface for the data module."""

    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 50 + 1 for c in text]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def test_windows_are_consecutive_and_the_teacher_continues_prompts_from_the_text():
    calls = []

    def sample(prompts: list[list[int]], num_new_tokens: int, seed: int) -> list[list[int]]:
        calls.append((prompts, num_new_tokens, seed))
        return [[99] * num_new_tokens for _ in prompts]

    texts = ["a" * 30, "b" * 40]
    data = build_training_data(CharTokenizer(), texts, "c" * 50, sequence_length=16, max_train_tokens=1000,
                               max_heldout_tokens=32, num_teacher_samples=3, sample=sample, seed=7)
    stream = CharTokenizer().encode("a" * 30) + [0] + CharTokenizer().encode("b" * 40) + [0]
    assert torch.equal(data.train_ids[: data.num_text_windows], token_windows(stream, 16))
    assert data.num_text_windows == 4 and data.heldout_ids.shape == (2, 16)
    (prompts, num_new_tokens, seed), = calls
    assert num_new_tokens == 12 and seed == 7 and len(prompts) == 3
    text_prefixes = {tuple(w[:4].tolist()) for w in data.train_ids[: data.num_text_windows]}
    assert all(len(p) == 4 and tuple(p) in text_prefixes for p in prompts)
    assert data.num_sampled_windows == 3  # 3 x (4 + 12 + EOS) = 51 tokens -> 3 windows of 16
    assert torch.equal(data.train_ids[data.num_text_windows][4:16], torch.full((12,), 99))


def test_too_little_text_is_an_error():
    with pytest.raises(DistillError, match="fewer than 64 tokens"):
        build_training_data(CharTokenizer(), ["short"], "c" * 100, 64, 1000, 64)


def test_sources_interleave_and_man_pages_lose_their_markup(tmp_path):
    (tmp_path / "notes.txt").write_text("user text " * 10)
    documents = gather_documents([str(tmp_path)], ["stdlib-source"], max_chars=20_000)
    assert [d.source for d in documents[:3]] == ["user", "stdlib-source", "stdlib-source"]
    roff = '.\\" comment\n.de XX\n.ds junk\n..\n.TH LS 1\n.SH NAME\nls \\- list \\fBdirectory\\fR contents\n.PP\n'
    assert _roff_to_text(roff) == "NAME\nls - list directory contents"
    with pytest.raises(DistillError, match="unknown text source"):
        gather_documents([], ["wikipedia"], 10)
