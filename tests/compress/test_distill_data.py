"""Training data: windows are consecutive EOS-joined tokens; teacher prompts are starts of text windows and the
teacher's samples are packed after the text; the local corpus interleaves its sources and reads man pages as text."""

from __future__ import annotations

import pytest
import torch

from corral.compress.distill.config import DistillError
from corral.compress.distill.corpus import _roff_to_text, gather_documents
from corral.compress.distill.data import build_training_data, prompt_lines, token_windows


class CharTokenizer:
    """One id per character (ord % 50 + 1), EOS 0: enough of the Tokenizer interface for the data module."""

    eos_token_id = 0
    eos_token_ids = (0, 50)  # 50: an end-of-turn id, as a chat model's <|im_end|>

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 50 + 1 for c in text]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def test_windows_are_consecutive_and_the_teacher_continues_prompts_from_the_text():
    calls = []

    def sample(prompts: list[list[int]], max_new_tokens: list[int], seed: int) -> list[list[int]]:
        calls.append((prompts, max_new_tokens, seed))
        return [[99] * n for n in max_new_tokens]

    texts = ["a" * 30, "b" * 40]
    data = build_training_data(CharTokenizer(), texts, "c" * 50, sequence_length=16, max_train_tokens=1000,
                               max_heldout_tokens=32, num_teacher_samples=3, sample=sample, seed=7)
    stream = CharTokenizer().encode("a" * 30) + [0] + CharTokenizer().encode("b" * 40) + [0]
    assert torch.equal(data.train_ids[: data.num_text_windows], token_windows(stream, 16))
    assert data.num_text_windows == 4 and data.heldout_ids.shape == (2, 16)
    (prompts, max_new_tokens, seed), = calls
    assert max_new_tokens == [12, 12, 12] and seed == 7 and len(prompts) == 3
    text_prefixes = {tuple(w[:4].tolist()) for w in data.train_ids[: data.num_text_windows]}
    assert all(len(p) == 4 and tuple(p) in text_prefixes for p in prompts)
    assert data.num_sampled_windows == 3  # 3 x (4 + 12 + EOS) = 51 tokens -> 3 windows of 16
    assert torch.equal(data.train_ids[data.num_text_windows][4:16], torch.full((12,), 99))


def test_chat_prompts_replace_text_prompts_and_each_fills_the_rest_of_a_window():
    calls = []

    def sample(prompts: list[list[int]], max_new_tokens: list[int], seed: int) -> list[list[int]]:
        calls.append((prompts, max_new_tokens))
        return [[99] * 3 + [0] if i % 2 else [99] * 3 + [50] for i in range(len(prompts))]  # replies end early

    chat = [[7] * 5, [8] * 9]
    data = build_training_data(CharTokenizer(), ["a" * 40], "c" * 50, sequence_length=16, max_train_tokens=1000,
                               max_heldout_tokens=16, num_teacher_samples=4, sample=sample, seed=1,
                               chat_prompts=chat)
    (prompts, max_new_tokens), = calls
    # every chat prompt once before any repeats, none of the text's windows
    assert sorted(prompts[:2]) == sorted(chat) and sorted(prompts[2:]) == sorted(chat)
    assert max_new_tokens == [16 - len(p) for p in prompts]
    # a reply that ended with EOS or an end-of-turn id gets no EOS after it
    stream = [t for i, p in enumerate(prompts) for t in p + [99, 99, 99, 0 if i % 2 else 50]]
    assert torch.equal(data.train_ids[data.num_text_windows:], token_windows(stream, 16))
    with pytest.raises(DistillError, match="1 chat prompts are as long as a training window"):
        build_training_data(CharTokenizer(), ["a" * 40], "c" * 50, 16, 1000, 16, 1, sample, chat_prompts=[[7] * 16])


def test_a_prompt_file_is_one_message_a_line():
    text = "  first message \n\nsecond\u2028still second, page\x0cbreak\r\n\n"
    assert prompt_lines(text) == ["first message", "second\u2028still second, page\x0cbreak"]


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
