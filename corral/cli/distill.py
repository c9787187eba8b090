"""``corral distill``: train a smaller student (an HF Llama directory, e.g. from ``corral prune``) toward a teacher's
next-token distributions on local text and the teacher's own samples; write it as a new HF directory
(docs/distillation.md). ``--draft-for T`` builds a draft model for speculative decoding from T instead: fewer
layers and an LM head over T's most frequent tokens. Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse
import json

from corral.errors import ConfigError

_SOURCES = ("stdlib-docstrings", "stdlib-source", "man", "doc")  # compress.distill.corpus.SYSTEM_SOURCES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--teacher", default=None, metavar="PATH",
                        help="GGUF file or HF directory (default: SmolLM2-135M-Instruct, dequantized to float32)")
    models.add_argument("--student", default=None, metavar="DIR",
                        help="HF Llama directory to train, with the teacher's tokenizer (e.g. from corral prune); "
                             "required unless --draft-for and --layers cut it from the target")
    models.add_argument("--out", required=True, metavar="DIR", help="the directory to create (must not exist)")
    models.add_argument("--work-dir", default=None, metavar="DIR",
                        help="prepared data, teacher top-k cache and checkpoints (default: OUT.distill)")
    models.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its checkpoint")
    models.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop once this many optimizer steps are taken, leaving a checkpoint to --resume")

    draft = parser.add_argument_group("draft model for speculative decoding")
    draft.add_argument("--draft-for", nargs="?", const="", default=None, metavar="TARGET",
                       help="build a draft of this model (GGUF file or HF directory, no value: the default "
                            "model; it is the teacher): speculative_config={'method': 'draft_model', 'model': OUT}")
    draft.add_argument("--layers", type=int, default=None, metavar="N",
                       help="the draft keeps the target's N layers of highest block influence")
    draft.add_argument("--draft-vocab", type=int, default=None, metavar="K",
                       help="the draft's LM head scores only the K token ids most frequent in the training "
                            "windows and the target's samples (default 8192)")

    data = parser.add_argument_group("data")
    data.add_argument("--data", action="append", default=[], metavar="PATH",
                      help="a text file or directory of them to train on, read first; repeatable (default: none)")
    data.add_argument("--sources", default=",".join(_SOURCES),
                      help="comma-separated local text to add: stdlib-docstrings, stdlib-source, man, doc; "
                           "'none' for --data only (default: all)")
    data.add_argument("--train-tokens", type=int, default=262_144, help="tokens of local text to train on")
    data.add_argument("--heldout-tokens", type=int, default=8192,
                      help="tokens of held-out standard-library docstrings to score before and after")
    data.add_argument("--heldout-data", default=None, metavar="FILE",
                      help="score on this UTF-8 text file instead (default: held-out standard-library docstrings)")
    data.add_argument("--teacher-samples", type=int, default=32,
                      help="sequences the teacher samples (temperature 1) from prompts drawn from the text, "
                           "one window each, added to the training windows (0: none)")
    data.add_argument("--teacher-prompts", default=None, metavar="FILE",
                      help="draw the teacher's prompts from this file instead: one user message a line, rendered "
                           "with the teacher's chat template; it answers each, up to a window in all")

    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one pass over the windows)")
    training.add_argument("--sequence-length", type=int, default=256, help="tokens per training window")
    training.add_argument("--batch-size", type=int, default=2, help="windows per micro-batch")
    training.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    training.add_argument("--lr", type=float, default=2e-4, help="peak AdamW learning rate")
    training.add_argument("--min-lr-ratio", type=float, default=0.1, help="the cosine ends at lr times this")
    training.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default: 5%% of the steps)")
    training.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's, on matrices only")
    training.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    training.add_argument("--temperature", type=float, default=1.0, help="of both distributions in the KL")
    training.add_argument("--ce-weight", type=float, default=0.0,
                          help="weight of the cross-entropy on the text's next tokens, added to the KL")
    training.add_argument("--top-k", type=int, default=64,
                          help="cache the teacher's top-k log-probabilities (and its tail mass) before training "
                               "and free the teacher; 0: run the teacher on every batch, full distributions")
    training.add_argument("--checkpoint-every", type=int, default=50, help="optimizer steps (0: only at the end)")
    training.add_argument("--seed", type=int, default=0, help="window order and teacher sampling")
    training.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                          help="matrix products' dtype (auto: bfloat16 where the CPU has avx512_bf16 or AMX, "
                               "else float32; weights and optimizer stay float32)")
    parser.add_argument("--output-json", default=None, metavar="FILE", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from corral.compress.distill import DistillConfig, DistillInputs, distill
    from corral.compress.distill.draft import DraftOptions

    if args.draft_for is None and (args.layers is not None or args.draft_vocab is not None):
        raise ConfigError("--layers and --draft-vocab build a draft model: give --draft-for TARGET")
    if args.draft_for is not None and args.teacher is not None:
        raise ConfigError("--draft-for names the teacher (the target): leave out --teacher")
    if args.draft_for is None and args.student is None:
        raise ConfigError("the following arguments are required: --student (or --draft-for TARGET --layers N)")
    teacher = (args.draft_for or None) if args.draft_for is not None else args.teacher
    draft = None if args.draft_for is None else DraftOptions(
        args.draft_vocab if args.draft_vocab is not None else 8192, args.layers)
    sources = () if args.sources == "none" else tuple(s for s in args.sources.split(",") if s)
    unknown = set(sources) - set(_SOURCES)
    if unknown:
        raise ConfigError(f"--sources: unknown {', '.join(sorted(unknown))} (choose from {', '.join(_SOURCES)}, none)")
    config = DistillConfig(
        steps=args.steps, sequence_length=args.sequence_length, sequences_per_step=args.batch_size,
        grad_accum_steps=args.grad_accum, learning_rate=args.lr, min_learning_rate_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        temperature=args.temperature, ce_weight=args.ce_weight, top_k=args.top_k,
        checkpoint_every=args.checkpoint_every, seed=args.seed, dtype=args.dtype,
    )
    inputs = DistillInputs(
        student=args.student, out=args.out, teacher=teacher, work_dir=args.work_dir,
        data_paths=tuple(args.data), sources=sources, train_tokens=args.train_tokens,
        heldout_tokens=args.heldout_tokens, heldout_path=args.heldout_data, teacher_samples=args.teacher_samples,
        teacher_prompts_path=args.teacher_prompts, resume=args.resume, stop_after=args.stop_after, draft=draft,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        phase_task = progress.add_task("prepare", total=1, stats="")
        train_task = None

        def on_progress(phase: str, done: int, total: int) -> None:
            progress.update(phase_task, description=phase, completed=done, total=total)

        def on_step(report) -> None:
            nonlocal train_task
            if train_task is None:
                progress.update(phase_task, visible=False)
                train_task = progress.add_task("distill", total=report.num_steps, stats="")
            progress.update(train_task, completed=report.step, stats=(
                f"loss {report.loss:.4f}  lr {report.learning_rate:.2e}  {report.tokens_per_second:,.0f} tok/s"))

        report = distill(inputs, config, _teacher_sampler(teacher), on_progress, on_step)
    _print_report(report)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


def _teacher_sampler(teacher: str | None):
    """Samples through the offline engine (KV cache, batching), which ``compress`` may not import itself."""

    def sample(prompts: list[list[int]], max_new_tokens: list[int], seed: int) -> list[list[int]]:
        from corral.llm import LLM
        from corral.sample.params import SamplingParams

        # quantization none: the exact float32 teacher whose distributions are distilled
        max_model_len = max(len(p) + n for p, n in zip(prompts, max_new_tokens, strict=True))
        llm = LLM(teacher, quantization="none", dtype="float32", max_model_len=max_model_len)
        params = [SamplingParams(temperature=1.0, max_tokens=n, seed=seed + index)
                  for index, n in enumerate(max_new_tokens)]
        return [list(output.outputs[0].token_ids) for output in llm.generate(prompts, params, use_tqdm=False)]

    return sample


def _print_report(report) -> None:
    print(f"trained {report.steps_taken}/{report.num_steps} steps on {report.tokens_seen:,} tokens "
          f"({report.num_text_windows} text + {report.num_sampled_windows} teacher-sampled windows of "
          f"{report.sequence_length}), {report.dtype}, {report.train_seconds:.0f} s")
    teacher, before, after = report.teacher, report.student_before, report.student_after
    print(f"held-out perplexity ({before.num_tokens} tokens): teacher {teacher.perplexity:.3f}, "
          f"student {before.perplexity:.3f}" + (f" -> {after.perplexity:.3f}" if after else ""))
    print(f"greedy agreement with the teacher: {before.greedy_agreement:.3f}"
          + (f" -> {after.greedy_agreement:.3f}" if after else ""))
    if report.draft_vocab_size is not None:
        layers = "" if report.draft_layers is None else f"layers {report.draft_layers}, "
        print(f"draft: {layers}LM head over {report.draft_vocab_size} ids covering {report.head_coverage:.1%} of "
              "the training tokens (perplexity and agreement above are over those ids)")
    if report.out is None:
        print(f"stopped early: checkpoint in {report.work_dir}; continue with --resume")
    else:
        print(f"wrote {report.out}")
