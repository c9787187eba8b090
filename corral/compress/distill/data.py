"""Token windows to train and evaluate on: documents tokenized, joined with end-of-sequence tokens and cut into
fixed-length windows; prompts for the teacher to continue (starts of those windows, or chat prompts given as
such); its samples packed the same way.

A training window is a plain ``[sequence_length]`` row of token ids: no padding and no masks, so every position
is a target. Documents follow one another inside a window, separated by EOS, as in pre-training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from corral.compress.distill.config import DistillError
from corral.text.tokenizer import Tokenizer

# ``sample(prompts, max_new_tokens, seed) -> completions``: token ids in (and each prompt's budget of new tokens),
# the teacher's sampled continuations out
TeacherSampler = Callable[[list[list[int]], list[int], int], list[list[int]]]


@dataclass(frozen=True)
class TrainingData:
    """Everything the run trains and evaluates on, fixed before the first step (and saved with it)."""

    train_ids: torch.Tensor  # [num_windows, sequence_length] int64: local text, then teacher samples
    heldout_ids: torch.Tensor  # [num_heldout_windows, sequence_length] int64
    num_text_windows: int  # the first rows of train_ids; the rest are teacher samples

    @property
    def num_sampled_windows(self) -> int:
        return len(self.train_ids) - self.num_text_windows


def token_windows(token_ids: Sequence[int], sequence_length: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows ``[num_windows, sequence_length]``; the remainder is dropped."""
    num_windows = len(token_ids) // sequence_length
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    ids = torch.tensor(list(token_ids[: num_windows * sequence_length]), dtype=torch.int64)
    return ids.view(num_windows, sequence_length)


def document_stream(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int) -> list[int]:
    """The texts' tokens, each document followed by EOS, cut at ``max_tokens``."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
        if len(stream) >= max_tokens:
            break
    return stream[:max_tokens]


def draw(num_items: int, num_draws: int, seed: int) -> list[int]:
    """``num_draws`` indices into ``num_items``, each pass over them a fresh permutation: without replacement
    until they run out, then again."""
    generator = torch.Generator().manual_seed(seed)
    passes = [torch.randperm(num_items, generator=generator) for _ in range(-(-num_draws // num_items))]
    return torch.cat(passes)[:num_draws].tolist()


def sampling_prompts(text_windows: torch.Tensor, num_prompts: int, prompt_length: int, seed: int) -> list[list[int]]:
    """``num_prompts`` prompts of ``prompt_length`` tokens, each the start of a text window drawn without
    replacement (with replacement once the windows run out)."""
    if num_prompts == 0:
        return []
    if len(text_windows) == 0:
        raise DistillError("no text windows to draw teacher prompts from: give more text or shorter windows")
    return [text_windows[i, :prompt_length].tolist() for i in draw(len(text_windows), num_prompts, seed)]


def build_training_data(
    tokenizer: Tokenizer,
    train_texts: Sequence[str],
    heldout_text: str,
    sequence_length: int,
    max_train_tokens: int,
    max_heldout_tokens: int,
    num_teacher_samples: int = 0,
    sample: TeacherSampler | None = None,
    seed: int = 0,
    chat_prompts: Sequence[list[int]] = (),
) -> TrainingData:
    """Tokenize the texts into windows and append ``num_teacher_samples`` sequences the teacher generates
    (sequence-level distillation on the teacher's own text), each at most a window long: from prompts of a
    quarter window drawn from the text, or from ``chat_prompts`` (rendered, tokenized) when there are any."""
    text_windows = token_windows(document_stream(tokenizer, train_texts, max_train_tokens), sequence_length)
    if len(text_windows) == 0:
        raise DistillError(f"the training text has fewer than {sequence_length} tokens")
    heldout = token_windows(tokenizer.encode(heldout_text, add_special_tokens=False), sequence_length,
                            max(1, max_heldout_tokens // sequence_length))
    if len(heldout) == 0:
        raise DistillError(f"the held-out text has fewer than {sequence_length} tokens")
    windows = [text_windows]
    if num_teacher_samples > 0:
        if sample is None:
            raise DistillError("teacher samples were asked for, but no sampler was given")
        if chat_prompts:
            too_long = [len(p) for p in chat_prompts if len(p) >= sequence_length]
            if too_long:
                raise DistillError(f"{len(too_long)} chat prompts are as long as a training window "
                                   f"({max(too_long)} >= {sequence_length} tokens): shorten them or raise "
                                   "--sequence-length")
            prompts = [list(chat_prompts[i]) for i in draw(len(chat_prompts), num_teacher_samples, seed)]
        else:
            prompts = sampling_prompts(text_windows, num_teacher_samples, max(1, sequence_length // 4), seed)
        completions = sample(prompts, [sequence_length - len(p) for p in prompts], seed)
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        stops = {*eos, *tokenizer.eos_token_ids}  # a chat reply may end on an end-of-turn id instead
        stream: list[int] = []
        for prompt, completion in zip(prompts, completions, strict=True):
            ended = bool(completion) and completion[-1] in stops
            stream += prompt + completion + ([] if ended else eos)
        windows.append(token_windows(stream, sequence_length))
    return TrainingData(torch.cat(windows), heldout, len(text_windows))


def prompt_lines(text: str) -> list[str]:
    """A ``--teacher-prompts`` file's user messages: one a line, stripped, blank lines skipped. Split at line
    feeds only (``str.splitlines`` would also split a message at a form feed or a Unicode line separator)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def render_chat_prompts(tokenizer: Tokenizer, user_messages: Sequence[str]) -> list[list[int]]:
    """Each message as the user's turn of a chat, rendered with the tokenizer's chat template up to the start of
    the assistant's reply, as token ids: what a chat client sends the model."""
    if tokenizer.chat_template is None:
        raise DistillError("--teacher-prompts: the teacher's tokenizer has no chat template to render them with")
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True)
                for m in user_messages]
    return tokenizer.encode_batch(rendered, add_special_tokens=False)
