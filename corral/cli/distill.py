"""``corral distill``: train a smaller student (an HF Llama directory, e.g. from ``corral prune``) toward a teacher's
next-token distributions on local text and the teacher's own samples; write it as a new HF directory
(docs/distillation.md). ``--draft-for T`` builds a draft model for speculative decoding from T instead: fewer
layers and an LM head over T's most frequent tokens. ``--draft-head-for T`` trains a draft head on T's own hidden
states (``compress.distill.head_train``). Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from corral.errors import ConfigError

_SOURCES = ("stdlib-docstrings", "stdlib-source", "man", "doc")  # compress.distill.corpus.SYSTEM_SOURCES
# the options a draft head run reads (beside its own group); any other one given is refused
_HEAD_OPTIONS = frozenset({"--draft-head-for", "--out", "--teacher-prompts", "--seed", "--lr", "--steps",
                           "--warmup-steps", "--weight-decay", "--output-json"})
# a draft head's own options, refused without --draft-head-for
_HEAD_ONLY = frozenset({"--head-vocab", "--head-intermediate", "--depth", "--samples", "--sample-tokens",
                        "--sample-temperature", "--sample-top-p", "--epochs"})
_HEAD_DEFAULT_LR, _HEAD_DEFAULT_WEIGHT_DECAY = 1e-3, 0.0


class _Store(argparse.Action):
    """argparse's plain store that also notes which options were given: a value equal to the default is still
    an option given, and a mode refuses the ones it would not read."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        given = getattr(namespace, "given_options", set())
        namespace.given_options = given | {self.option_strings[0]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.register("action", None, _Store)  # the default action of every option below
    parser.register("action", "store", _Store)
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

    head = parser.add_argument_group("draft head for speculative decoding (EAGLE-style, on the target's features)")
    head.add_argument("--draft-head-for", nargs="?", const="", default=None, metavar="TARGET",
                      help="train a draft head for this model (GGUF file or HF directory, no value: the default "
                           "model) on its own replies to chat prompts: speculative_config={'method': "
                           "'draft_head', 'model': OUT}; reads --out, --teacher-prompts, --seed, --lr (default "
                           "1e-3), --steps, --warmup-steps, --weight-decay (default 0) and --output-json")
    head.add_argument("--head-vocab", type=int, default=None, metavar="K",
                      help="the head scores the K ids most frequent in the target's replies (default 8192)")
    head.add_argument("--head-intermediate", type=int, default=None, metavar="I",
                      help="width of the head's SwiGLU block (default: the target's intermediate size)")
    head.add_argument("--depth", type=int, default=None, metavar="N",
                      help="draft steps the training unrolls, each fed the previous prediction (default 3)")
    head.add_argument("--samples", type=int, default=None, metavar="N",
                      help="replies the target samples to train on, 10%% held out to score (default 512)")
    head.add_argument("--sample-tokens", type=int, default=None, metavar="N",
                      help="new tokens per reply at most (default 256)")
    head.add_argument("--sample-temperature", type=float, default=None, metavar="T",
                      help="the target's sampling temperature, also the scoring's (default 0.8)")
    head.add_argument("--sample-top-p", type=float, default=None, metavar="P",
                      help="the target's top-p, also the scoring's (default 0.95)")
    head.add_argument("--epochs", type=float, default=None, help="passes over the training rows unless --steps "
                      "(default 2)")

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

    if args.draft_head_for is not None:
        return _run_draft_head(args)
    head_options = sorted(_given(args) & _HEAD_ONLY)
    if head_options:
        raise ConfigError(f"{head_options[0]} is for a draft head: give --draft-head-for TARGET")
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


def _given(args: argparse.Namespace) -> set[str]:
    """The options on the command line (flags and repeatable ones by their value)."""
    given = set(getattr(args, "given_options", set()))
    return given | ({"--resume"} if args.resume else set()) | ({"--data"} if args.data else set())


def _run_draft_head(args: argparse.Namespace) -> int:
    from corral.compress.distill.corpus import read_text_file
    from corral.compress.distill.data import prompt_lines
    from corral.compress.distill.head_train import HeadInputs, HeadTrainConfig, build_draft_head

    given = _given(args)
    refused = sorted(given - _HEAD_OPTIONS - _HEAD_ONLY)
    if refused:
        raise ConfigError(f"{refused[0]} does not apply to --draft-head-for")
    if args.steps is not None and args.epochs is not None:
        raise ConfigError("--epochs and --steps both set how long a draft head trains: give one")
    target = args.draft_head_for or None
    messages: tuple[str, ...] = ()
    if args.teacher_prompts is not None:
        if not os.path.isfile(args.teacher_prompts):
            raise ConfigError(f"--teacher-prompts {args.teacher_prompts}: no such file")
        messages = tuple(prompt_lines(read_text_file(args.teacher_prompts)))
        if not messages:
            raise ConfigError(f"--teacher-prompts {args.teacher_prompts}: no prompts (one a line)")

    def pick(value, default):
        return default if value is None else value

    temperature, top_p = pick(args.sample_temperature, 0.8), pick(args.sample_top_p, 0.95)
    inputs = HeadInputs(out=args.out, target=target, user_messages=messages, num_samples=pick(args.samples, 512),
                        max_new_tokens=pick(args.sample_tokens, 256), temperature=temperature, top_p=top_p)
    config = HeadTrainConfig(
        head_size=pick(args.head_vocab, 8192), intermediate_size=args.head_intermediate, depth=pick(args.depth, 3),
        epochs=pick(args.epochs, 2.0), steps=args.steps,
        learning_rate=args.lr if "--lr" in given else _HEAD_DEFAULT_LR, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay if "--weight-decay" in given else _HEAD_DEFAULT_WEIGHT_DECAY, seed=args.seed)

    def on_progress(phase: str, done: int, total: int) -> None:
        if total == 1:  # a phase without steps: announced as it starts
            if done == 0:
                print(phase, file=sys.stderr, flush=True)
        elif done == total or done % 50 == 0:
            print(f"{phase} {done}/{total}", file=sys.stderr, flush=True)

    def on_step(step) -> None:
        if step.step == 1 or step.step % 50 == 0 or step.step == step.num_steps:
            print(f"train step {step.step}/{step.num_steps}  loss {step.loss:.4f}  {step.rows_per_second:,.0f} rows/s",
                  file=sys.stderr, flush=True)

    report = build_draft_head(inputs, config, _teacher_sampler(target, temperature, top_p), on_progress, on_step)
    _print_head_report(report)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


def _print_head_report(report) -> None:
    heldout = report.heldout
    print(f"draft head: {report.head_size} ids covering {report.head_coverage:.1%} of the training tokens, "
          f"SwiGLU {report.intermediate_size}; trained {report.steps} steps ({report.num_train_rows:,} windows of "
          f"{report.depth} from {report.num_train_sequences} replies), loss {report.first_loss:.3f} -> "
          f"{report.last_loss:.3f}, {report.train_seconds:.0f} s")
    steps = "  ".join(f"step {i + 1} {a:.3f}" for i, a in enumerate(heldout.acceptance))
    print(f"held-out acceptance at temperature {heldout.temperature}, top-p {heldout.top_p} "
          f"({heldout.num_rows:,} windows from {report.num_heldout_sequences} replies): {steps}")
    print("greedy agreement: " + "  ".join(f"step {i + 1} {a:.3f}" for i, a in enumerate(heldout.greedy_agreement)))
    print(f"wrote {report.out}; use it with LLM(..., speculative_config="
          f"{{\"method\": \"draft_head\", \"model\": {json.dumps(report.out)}}})")


def _teacher_sampler(teacher: str | None, temperature: float = 1.0, top_p: float = 1.0):
    """Samples through the offline engine (KV cache, batching), which ``compress`` may not import itself."""

    def sample(prompts: list[list[int]], max_new_tokens: list[int], seed: int) -> list[list[int]]:
        from corral.llm import LLM
        from corral.sample.params import SamplingParams

        # quantization none: the exact float32 teacher whose distributions are distilled
        max_model_len = max(len(p) + n for p, n in zip(prompts, max_new_tokens, strict=True))
        llm = LLM(teacher, quantization="none", dtype="float32", max_model_len=max_model_len)
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=n, seed=seed + index)
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
