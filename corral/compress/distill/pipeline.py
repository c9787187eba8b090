"""``distill``: one run from a teacher and a student directory to the distilled student's directory.

1. prepare (once; saved in the work directory, so ``resume`` skips it): gather and tokenize local text, let the
   teacher sample continuations of prompts drawn from it, score teacher and student on held-out text, and,
   with ``top_k``, cache the teacher's top-k targets for every training window and let the teacher go;
2. train (``trainer.py``), checkpointing into the work directory;
3. score the student again and write it as an HF Llama directory.

With ``draft`` (``corral distill --draft-for T``) the teacher is the target T and the student its draft
(``draft.py``): the target cut to ``--layers`` layers (or ``--student``) with a head over the ``--draft-vocab``
most frequent ids of the prepared windows, trained toward the target's distribution renormalized over those ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from corral.compress.distill.checkpoint import CHECKPOINT_FILE, tensor_digest
from corral.compress.distill.config import DistillConfig, DistillError, training_dtype
from corral.compress.distill.corpus import SYSTEM_SOURCES, gather_documents, heldout_text, read_text_file
from corral.compress.distill.data import (
    TeacherSampler,
    TrainingData,
    build_training_data,
    prompt_lines,
    render_chat_prompts,
)
from corral.compress.distill.draft import (
    DraftOptions,
    choose_layers,
    cut_target,
    head_coverage,
    rank_head_ids,
    with_head,
)
from corral.compress.distill.evaluate import HeldoutScore, score
from corral.compress.distill.model import (
    DenseModel,
    check_compatible,
    check_student_dir,
    load_model,
)
from corral.compress.distill.output import check_output_dir, write_student
from corral.compress.distill.teacher import OnlineTeacher, TeacherTargets, TopKCache, cache_topk
from corral.compress.distill.trainer import StepReport, train
from corral.loader import default_model_path, load_tokenizer, open_checkpoint
from corral.loader.safetensors import hf_config_dict
from corral.models.spec import ModelConfig
from corral.text.tokenizer import Tokenizer

PREPARED_FILE = "prepared.pt"
_CHARS_PER_TOKEN = 3  # generous: gather this many characters per wanted token, so tokenizing rarely runs short

# (phase, done, total) for the phases before and after training
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DistillInputs:
    """Where things are and what text to use. ``work_dir`` (None: ``{out}.distill``) holds the prepared data
    and the checkpoints."""

    student: str | None  # None: a draft cut from the teacher (``draft.num_layers``)
    out: str
    teacher: str | None = None  # None: the default model (its GGUF, dequantized to float32)
    work_dir: str | None = None
    data_paths: tuple[str, ...] = ()
    sources: tuple[str, ...] = SYSTEM_SOURCES
    train_tokens: int = 262_144
    heldout_tokens: int = 8192
    teacher_samples: int = 32  # sequences the teacher generates (each one training window long)
    teacher_prompts_path: str | None = None  # user messages, one a line: the teacher answers them as a chat
    heldout_path: str | None = None  # None: the held-out split of the standard library's docstrings
    resume: bool = False
    stop_after: int | None = None  # optimizer steps, in total: stop there with a checkpoint
    draft: DraftOptions | None = None  # a draft model for speculative decoding, with a reduced head

    @property
    def resolved_work_dir(self) -> str:
        return self.work_dir if self.work_dir is not None else self.out.rstrip("/") + ".distill"

    def __post_init__(self) -> None:
        if self.train_tokens < 1 or self.heldout_tokens < 1 or self.teacher_samples < 0:
            raise DistillError("train and held-out tokens must be >= 1, teacher samples >= 0")
        if self.heldout_path is not None and not os.path.isfile(self.heldout_path):
            raise DistillError(f"--heldout-data {self.heldout_path}: no such file")
        if self.teacher_prompts_path is not None:
            if not os.path.isfile(self.teacher_prompts_path):
                raise DistillError(f"--teacher-prompts {self.teacher_prompts_path}: no such file")
            if self.teacher_samples == 0:
                raise DistillError("--teacher-prompts are for the teacher's samples: give --teacher-samples > 0")
        if self.stop_after is not None and self.stop_after < 1:
            raise DistillError(f"stop_after must be >= 1, got {self.stop_after}")
        if self.student is None and (self.draft is None or self.draft.num_layers is None):
            raise DistillError("give --student DIR, or --draft-for TARGET with --layers N")
        if self.student is not None and self.draft is not None and self.draft.num_layers is not None:
            raise DistillError("--layers cuts the draft from the target: give it or --student, not both")


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
    draft_layers: list[int] | None = None  # the target's layers a draft kept
    draft_vocab_size: int | None = None
    head_coverage: float | None = None  # share of the training tokens among a draft head's ids

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
    if inputs.student is not None:
        check_student_dir(inputs.student)
    check_output_dir(inputs.out)
    work_dir = inputs.resolved_work_dir
    prepared_path = os.path.join(work_dir, PREPARED_FILE)
    if not inputs.resume and os.path.exists(prepared_path):
        raise DistillError(f"{work_dir} holds an earlier run: pass --resume to continue it, or remove it")
    teacher_path = inputs.teacher if inputs.teacher is not None else default_model_path()
    models = _open_models(inputs, teacher_path)
    teacher_config, student_config, student = models.teacher_config, models.student_config, models.student
    context = min(teacher_config.max_position_embeddings, student_config.max_position_embeddings)
    if config.sequence_length > context:
        raise DistillError(f"--sequence-length {config.sequence_length} exceeds the models' context of {context}")
    # a resumed run with cached targets never runs the teacher (a draft cut from it still reads its weights)
    teacher = None if inputs.resume and config.top_k and student is not None else load_model(teacher_path)
    dtype = training_dtype(config.dtype)
    run_fingerprint = _json_ready({
        "student": None if inputs.student is None else os.path.abspath(inputs.student),
        "student_config": hf_config_dict(student_config),
        "teacher": os.path.abspath(teacher_path), "teacher_config": hf_config_dict(teacher_config),
        "inputs": {k: v for k, v in dataclasses.asdict(inputs).items()
                   if k not in ("out", "work_dir", "resume", "stop_after")},
        "dtype": str(dtype),
    })
    if inputs.resume and not os.path.exists(prepared_path):
        raise DistillError(f"--resume: nothing to resume in {work_dir}")
    if inputs.resume:
        prepared = _load_prepared(prepared_path, run_fingerprint)
        student = _student(inputs.draft, student, teacher, prepared)
    else:
        assert teacher is not None
        prepared, student = _prepare(inputs, config, student, teacher, models, sample, dtype, on_progress)
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
        targets = OnlineTeacher(_teacher_view(teacher, prepared), dtype)
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
        write_student(inputs.out, student, inputs.student if inputs.student is not None else models.tokenizer)
    head_ids = prepared["head_token_ids"]
    return DistillReport(inputs.out if result.finished else None, work_dir, str(dtype).removeprefix("torch."),
                         data.num_text_windows, data.num_sampled_windows, config.sequence_length,
                         result.steps_taken, result.num_steps, result.tokens_seen, result.seconds,
                         prepared["teacher_score"], prepared["student_before"], after, result.step_losses,
                         prepared["draft_layers"], None if head_ids is None else len(head_ids),
                         None if head_ids is None else head_coverage(data.train_ids, head_ids))


@dataclass
class _Models:
    teacher_config: ModelConfig
    tokenizer: Tokenizer  # the student's (a draft's: the teacher's)
    teacher_tokenizer: Tokenizer  # the same vocabulary; its chat template renders the teacher's chat prompts
    student: DenseModel | None  # None: a draft to be cut from the teacher
    student_config: ModelConfig  # what the student will be (a draft's config before it is cut)


def _open_models(inputs: DistillInputs, teacher_path: str) -> _Models:
    """The teacher's config and tokenizer, the student as given, and the student's config; refuses a pair
    over different vocabularies, and a draft larger than its target."""
    teacher_tokenizer = tokenizer = load_tokenizer(teacher_path)
    teacher_config, _ = open_checkpoint(teacher_path)  # reads the config only
    student: DenseModel | None = None
    if inputs.student is not None:
        tokenizer = load_tokenizer(inputs.student)
        student = load_model(inputs.student, trainable=True)
        check_compatible(teacher_config, student.config, teacher_tokenizer, tokenizer)
    student_config = student.config if student is not None else teacher_config
    if inputs.draft is not None:
        inputs.draft.check(teacher_config)
        student_config = replace(student_config, num_hidden_layers=inputs.draft.num_layers or
                                 student_config.num_hidden_layers, draft_vocab_size=inputs.draft.vocab_size)
    return _Models(teacher_config, tokenizer, teacher_tokenizer, student, student_config)


def _student(draft: DraftOptions | None, student: DenseModel | None, teacher: DenseModel | None,
             prepared: dict[str, Any]) -> DenseModel:
    """The student as training starts: as loaded, or a draft (cut from the teacher, or given a reduced head)."""
    if draft is None:
        assert student is not None
        return student
    if student is None:
        assert teacher is not None
        return cut_target(teacher, prepared["draft_layers"], prepared["head_token_ids"])
    return with_head(student, prepared["head_token_ids"], trainable=True)


def _teacher_view(teacher: DenseModel, prepared: dict[str, Any]) -> DenseModel:
    """The teacher as the student sees it: over a draft's head ids (its distribution renormalized there)."""
    head_ids = prepared["head_token_ids"]
    return teacher if head_ids is None else with_head(teacher, head_ids)


def _prepare(
    inputs: DistillInputs,
    config: DistillConfig,
    student: DenseModel | None,
    teacher: DenseModel,
    models: _Models,
    sample: TeacherSampler | None,
    dtype: torch.dtype,
    on_progress: ProgressFn | None,
) -> tuple[dict[str, Any], DenseModel]:
    def progress(phase: str, done: int = 0, total: int = 1) -> None:
        if on_progress is not None:
            on_progress(phase, done, total)

    tokenizer = models.tokenizer
    progress("gather text")
    documents = gather_documents(inputs.data_paths, inputs.sources, inputs.train_tokens * _CHARS_PER_TOKEN)
    if inputs.teacher_samples:
        progress(f"teacher samples {inputs.teacher_samples} sequences")
    heldout = heldout_text() if inputs.heldout_path is None else read_text_file(inputs.heldout_path)
    chat_prompts: list[list[int]] = []
    if inputs.teacher_prompts_path is not None:
        messages = prompt_lines(read_text_file(inputs.teacher_prompts_path))
        chat_prompts = render_chat_prompts(models.teacher_tokenizer, messages)
        if not chat_prompts:
            raise DistillError(f"--teacher-prompts {inputs.teacher_prompts_path}: no prompts (one a line)")
    data = build_training_data(tokenizer, [d.text for d in documents], heldout, config.sequence_length,
                               inputs.train_tokens, inputs.heldout_tokens, inputs.teacher_samples, sample,
                               config.seed, chat_prompts)
    prepared: dict[str, Any] = {"data": data, "head_token_ids": None, "draft_layers": None, "cache": None}
    if inputs.draft is not None:
        progress("rank the draft's vocabulary")
        special = set(tokenizer.all_special_ids) | set(tokenizer.eos_token_ids) | set(teacher.config.eos_token_ids)
        prepared["head_token_ids"] = rank_head_ids(data.train_ids, teacher.config.vocab_size,
                                                   inputs.draft.vocab_size, special)
        if student is None:
            assert inputs.draft.num_layers is not None
            progress("choose the draft's layers")
            prepared["draft_layers"] = choose_layers(teacher, data.train_ids, inputs.draft.num_layers)
    student = _student(inputs.draft, student, teacher, prepared)
    teacher = _teacher_view(teacher, prepared)
    progress("score the teacher")
    teacher_score, teacher_greedy = score(teacher, data.heldout_ids, config.sequences_per_step, dtype, None)
    progress("score the student")
    student_before, _ = score(student, data.heldout_ids, config.sequences_per_step, dtype, teacher_greedy)
    prepared.update(teacher_score=teacher_score, teacher_greedy=teacher_greedy, student_before=student_before)
    if config.top_k:
        prepared["cache"] = cache_topk(teacher, data.train_ids, config.top_k, config.temperature,
                                       config.sequences_per_step, dtype,
                                       lambda done, total: progress("cache teacher top-k", done, total))
    return prepared, student


def _to_saved(prepared: dict[str, Any]) -> dict[str, Any]:
    """Plain tensors, numbers and dicts only, so the file loads with ``weights_only``."""
    data: TrainingData = prepared["data"]
    cache: TopKCache | None = prepared["cache"]
    return {"train_ids": data.train_ids, "heldout_ids": data.heldout_ids, "num_text_windows": data.num_text_windows,
            "teacher_score": dataclasses.asdict(prepared["teacher_score"]), "teacher_greedy": prepared["teacher_greedy"],
            "student_before": dataclasses.asdict(prepared["student_before"]),
            "cache": None if cache is None else cache.state_dict(),
            "head_token_ids": prepared["head_token_ids"], "draft_layers": prepared["draft_layers"]}


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
            "cache": None if cache is None else TopKCache(**cache),
            "head_token_ids": saved["head_token_ids"], "draft_layers": saved["draft_layers"]}


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, as they come back from a checkpoint: fingerprints compare equal across a save."""
    return json.loads(json.dumps(value))
