"""``distill``: one run from a teacher and a student directory to the distilled student's directory.

1. prepare (once; saved in the work directory, so ``resume`` skips it): gather and tokenize local text, let the
   teacher sample continuations of prompts drawn from it, score teacher and student on held-out text, and,
   with ``top_k``, cache the teacher's top-k targets for every training window and let the teacher go;
2. train (``trainer.py``), checkpointing into the work directory;
3. score the student again and write it as an HF Llama directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from corral.compress.distill.checkpoint import CHECKPOINT_FILE, tensor_digest
from corral.compress.distill.config import DistillConfig, DistillError, training_dtype
from corral.compress.distill.corpus import SYSTEM_SOURCES, gather_documents, heldout_text, read_text_file
from corral.compress.distill.data import TeacherSampler, TrainingData, build_training_data
from corral.compress.distill.evaluate import HeldoutScore, score
from corral.compress.distill.model import (
    DenseModel,
    check_compatible,
    check_student_dir,
    load_model,
    load_tokenizers,
)
from corral.compress.distill.output import check_output_dir, write_student
from corral.compress.distill.teacher import OnlineTeacher, TeacherTargets, TopKCache, cache_topk
from corral.compress.distill.trainer import StepReport, train
from corral.loader import default_model_path, open_checkpoint
from corral.loader.safetensors import hf_config_dict
from corral.text.tokenizer import Tokenizer

PREPARED_FILE = "prepared.pt"
_CHARS_PER_TOKEN = 3  # generous: gather this many characters per wanted token, so tokenizing rarely runs short

# (phase, done, total) for the phases before and after training
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DistillInputs:
    """Where things are and what text to use. ``work_dir`` (None: ``{out}.distill``) holds the prepared data
    and the checkpoints."""

    student: str
    out: str
    teacher: str | None = None  # None: the default model (its GGUF, dequantized to float32)
    work_dir: str | None = None
    data_paths: tuple[str, ...] = ()
    sources: tuple[str, ...] = SYSTEM_SOURCES
    train_tokens: int = 262_144
    heldout_tokens: int = 8192
    teacher_samples: int = 32  # sequences the teacher generates (each one training window long)
    heldout_path: str | None = None  # None: the held-out split of the standard library's docstrings
    resume: bool = False
    stop_after: int | None = None  # optimizer steps, in total: stop there with a checkpoint

    @property
    def resolved_work_dir(self) -> str:
        return self.work_dir if self.work_dir is not None else self.out.rstrip("/") + ".distill"

    def __post_init__(self) -> None:
        if self.train_tokens < 1 or self.heldout_tokens < 1 or self.teacher_samples < 0:
            raise DistillError("train and held-out tokens must be >= 1, teacher samples >= 0")
        if self.heldout_path is not None and not os.path.isfile(self.heldout_path):
            raise DistillError(f"--heldout-data {self.heldout_path}: no such file")
        if self.stop_after is not None and self.stop_after < 1:
            raise DistillError(f"stop_after must be >= 1, got {self.stop_after}")


@dataclass
class DistillReport:
    out: str | None  # None: stopped before the end (resume to finish)
    work_dir: str
    dtype: str
    num_text_windows: int
    num_sampled_windows: int
    sequence_length: int
    steps_taken: int
    num_steps: int
    tokens_seen: int  # training tokens through the student, counting repeats
    train_seconds: float
    teacher: HeldoutScore
    student_before: HeldoutScore
    student_after: HeldoutScore | None
    step_losses: list[float]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def distill(
    inputs: DistillInputs,
    config: DistillConfig,
    sample: TeacherSampler | None = None,
    on_progress: ProgressFn | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> DistillReport:
    """Distil ``inputs.teacher`` into ``inputs.student``; ``sample`` generates the teacher's own sequences
    (needed when ``inputs.teacher_samples`` > 0)."""
    check_student_dir(inputs.student)
    check_output_dir(inputs.out)
    work_dir = inputs.resolved_work_dir
    prepared_path = os.path.join(work_dir, PREPARED_FILE)
    if not inputs.resume and os.path.exists(prepared_path):
        raise DistillError(f"{work_dir} holds an earlier run: pass --resume to continue it, or remove it")
    teacher_path = inputs.teacher if inputs.teacher is not None else default_model_path()
    teacher_tokenizer, tokenizer = load_tokenizers(teacher_path, inputs.student)
    student = load_model(inputs.student, trainable=True)
    teacher_config, _ = open_checkpoint(teacher_path)  # reads the config only
    check_compatible(teacher_config, student.config, teacher_tokenizer, tokenizer)
    context = min(teacher_config.max_position_embeddings, student.config.max_position_embeddings)
    if config.sequence_length > context:
        raise DistillError(f"--sequence-length {config.sequence_length} exceeds the models' context of {context}")
    # a resumed run with cached targets never runs the teacher
    teacher = None if inputs.resume and config.top_k else load_model(teacher_path)
    dtype = training_dtype(config.dtype)
    run_fingerprint = _json_ready({
        "student": os.path.abspath(inputs.student), "student_config": hf_config_dict(student.config),
        "teacher": os.path.abspath(teacher_path), "teacher_config": hf_config_dict(teacher_config),
        "inputs": {k: v for k, v in dataclasses.asdict(inputs).items()
                   if k not in ("out", "work_dir", "resume", "stop_after")},
        "dtype": str(dtype),
    })
    if inputs.resume and not os.path.exists(prepared_path):
        raise DistillError(f"--resume: nothing to resume in {work_dir}")
    if inputs.resume:
        prepared = _load_prepared(prepared_path, run_fingerprint)
    else:
        assert teacher is not None
        prepared = _prepare(inputs, config, student, teacher, tokenizer, sample, dtype, on_progress)
        os.makedirs(work_dir, exist_ok=True)
        torch.save({"fingerprint": run_fingerprint, **_to_saved(prepared)}, prepared_path)
    data: TrainingData = prepared["data"]
    if config.top_k and prepared["cache"] is None:
        raise DistillError("--resume: the run was prepared without a top-k cache (--top-k 0)")
    if config.top_k:
        targets: TeacherTargets = prepared["cache"]
        teacher = None  # the cache stands in for it from here on
    else:
        assert teacher is not None
        targets = OnlineTeacher(teacher, dtype)
    run_fingerprint["data"] = tensor_digest(data.train_ids)
    # a run stopped before its first checkpoint restarts training from step 0 on the prepared data
    resume_training = inputs.resume and os.path.exists(os.path.join(work_dir, CHECKPOINT_FILE))
    result = train(student, data.train_ids, targets, config, work_dir, run_fingerprint, resume_training,
                   inputs.stop_after, on_step)
    after = None
    if result.finished:
        if on_progress is not None:
            on_progress("score the student", 0, 1)
        after, _ = score(student, data.heldout_ids, config.sequences_per_step, dtype, prepared["teacher_greedy"])
        write_student(inputs.out, student, inputs.student)
    return DistillReport(inputs.out if result.finished else None, work_dir, str(dtype).removeprefix("torch."),
                         data.num_text_windows, data.num_sampled_windows, config.sequence_length,
                         result.steps_taken, result.num_steps, result.tokens_seen, result.seconds,
                         prepared["teacher_score"], prepared["student_before"], after, result.step_losses)


def _prepare(
    inputs: DistillInputs,
    config: DistillConfig,
    student: DenseModel,
    teacher: DenseModel,
    tokenizer: Tokenizer,
    sample: TeacherSampler | None,
    dtype: torch.dtype,
    on_progress: ProgressFn | None,
) -> dict[str, Any]:
    def progress(phase: str, done: int = 0, total: int = 1) -> None:
        if on_progress is not None:
            on_progress(phase, done, total)

    progress("gather text")
    documents = gather_documents(inputs.data_paths, inputs.sources, inputs.train_tokens * _CHARS_PER_TOKEN)
    if inputs.teacher_samples:
        progress(f"teacher samples {inputs.teacher_samples} sequences")
    heldout = heldout_text() if inputs.heldout_path is None else read_text_file(inputs.heldout_path)
    data = build_training_data(tokenizer, [d.text for d in documents], heldout, config.sequence_length,
                               inputs.train_tokens, inputs.heldout_tokens, inputs.teacher_samples, sample,
                               config.seed)
    progress("score the teacher")
    teacher_score, teacher_greedy = score(teacher, data.heldout_ids, config.sequences_per_step, dtype, None)
    progress("score the student")
    student_before, _ = score(student, data.heldout_ids, config.sequences_per_step, dtype, teacher_greedy)
    prepared: dict[str, Any] = {"data": data, "teacher_score": teacher_score, "teacher_greedy": teacher_greedy,
                                "student_before": student_before, "cache": None}
    if config.top_k:
        prepared["cache"] = cache_topk(teacher, data.train_ids, config.top_k, config.temperature,
                                       config.sequences_per_step, dtype,
                                       lambda done, total: progress("cache teacher top-k", done, total))
    return prepared


def _to_saved(prepared: dict[str, Any]) -> dict[str, Any]:
    """Plain tensors, numbers and dicts only, so the file loads with ``weights_only``."""
    data: TrainingData = prepared["data"]
    cache: TopKCache | None = prepared["cache"]
    return {"train_ids": data.train_ids, "heldout_ids": data.heldout_ids, "num_text_windows": data.num_text_windows,
            "teacher_score": dataclasses.asdict(prepared["teacher_score"]), "teacher_greedy": prepared["teacher_greedy"],
            "student_before": dataclasses.asdict(prepared["student_before"]),
            "cache": None if cache is None else cache.state_dict()}


def _load_prepared(path: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise DistillError(f"--resume: cannot read {path}: {e}") from e
    stored = saved.get("fingerprint") if isinstance(saved, dict) else None
    if stored != fingerprint:
        stored = stored or {}
        differing = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise DistillError(f"--resume: {path} was prepared for another run (its {', '.join(differing)} differ)")
    cache = saved["cache"]
    return {"data": TrainingData(saved["train_ids"], saved["heldout_ids"], saved["num_text_windows"]),
            "teacher_score": HeldoutScore(**saved["teacher_score"]), "teacher_greedy": saved["teacher_greedy"],
            "student_before": HeldoutScore(**saved["student_before"]),
            "cache": None if cache is None else TopKCache(**cache)}


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, as they come back from a checkpoint: fingerprints compare equal across a save."""
    return json.loads(json.dumps(value))
