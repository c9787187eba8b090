"""``corral distill`` on the default model: (1) one training step in bfloat16 (autocast) against float32, for a student
of the default model's shape; (2) a short real run: the default model (SmolLM2-135M-Instruct, dequantized) is the
teacher, the student is that model with its last third of decoder layers removed, and the report gives held-out
perplexity before and after and the tokens used. Results go to bench/results/distill.json.

    .venv/bin/python bench/distill_bench.py --train-seconds 600

Timings are noisy wherever other processes share the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import tempfile
import time

import torch

from corral.cli.main import main as corral_main
from corral.compress.distill.config import DistillConfig
from corral.compress.distill.loss import distillation_loss, topk_targets
from corral.compress.distill.model import DenseModel, load_model, matmul_dtype
from corral.compress.distill.trainer import build_optimizer
from corral.loader import default_model_path, load_checkpoint, load_tokenizer, save_hf_dir
from corral.models.loading import first_layers
from corral.platform import cpu_flags

RESULTS = os.path.join(os.path.dirname(__file__), "results", "distill.json")


def make_sliced_student(path: str, keep_fraction: float = 2 / 3) -> int:
    """The default model with its last decoder layers removed, as an HF directory; returns the layers kept."""
    config, weights = load_checkpoint(None)
    num_layers = round(config.num_hidden_layers * keep_fraction)
    sliced_config, sliced = first_layers(config, weights, num_layers)
    save_hf_dir(path, sliced_config, dict(sliced))
    load_tokenizer(None).save_pretrained(path)
    return num_layers


def time_training_step(student_dir: str, num_tokens: int, repeats: int) -> dict[str, float]:
    """Seconds per optimizer step (forward, top-k KL, backward, AdamW) of one ``num_tokens`` window, per dtype."""
    teacher = load_model(None)
    input_ids = torch.randint(0, teacher.config.vocab_size, (1, num_tokens), generator=torch.Generator().manual_seed(0))
    targets = topk_targets(teacher.logits(input_ids, torch.float32), 64)
    del teacher
    seconds = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        student: DenseModel = load_model(student_dir, trainable=True)
        optimizer = build_optimizer(student, DistillConfig())
        times = []
        for _ in range(repeats + 1):  # the first step warms up allocations and oneDNN's kernels
            started = time.perf_counter()
            with matmul_dtype(dtype):
                logits = student.forward()(input_ids)
            distillation_loss(logits, targets, input_ids).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        seconds[name] = min(seconds.get(name, float("inf")), min(times[1:]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-seconds", type=float, default=600, help="rough budget of the training phase")
    parser.add_argument("--step-tokens", type=int, default=256, help="tokens of the dtype comparison's step")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per dtype, after one warm-up step")
    parser.add_argument("--teacher-samples", type=int, default=8, help="sequences the teacher samples")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: fit --train-seconds)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: corral distill's)")
    parser.add_argument("--reuse-dtype-step", action="store_true",
                        help="take the dtype comparison from the existing results file instead of measuring it")
    parser.add_argument("--skip-run", action="store_true", help="only the dtype comparison")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="distill-bench-")
    student_dir = os.path.join(work, "student")
    num_layers = make_sliced_student(student_dir)
    if args.reuse_dtype_step:
        with open(RESULTS, encoding="utf-8") as f:
            step_seconds = json.load(f)["dtype_step"]["seconds"]
    else:
        step_seconds = time_training_step(student_dir, args.step_tokens, repeats=args.repeats)
    print(f"one training step of {args.step_tokens} tokens: "
          + ", ".join(f"{name} {s:.2f} s" for name, s in step_seconds.items()), flush=True)
    result: dict = {
        "date": datetime.date.today().isoformat(), "host": platform.processor() or platform.machine(),
        "num_threads": torch.get_num_threads(), "torch": torch.__version__,
        "bf16_cpu_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f", "avx2"}),
        "student_layers": num_layers, "teacher": os.path.basename(default_model_path()),
        "dtype_step": {"tokens": args.step_tokens, "seconds": step_seconds},
    }
    if not args.skip_run:
        config = DistillConfig()
        seconds_per_token = step_seconds["float32"] / args.step_tokens * 1.15  # batches of 2 windows cost a bit more
        steps = args.steps or max(4, int(args.train_seconds / (seconds_per_token * config.tokens_per_step)))
        train_tokens = steps * config.tokens_per_step
        cli = ["distill", "--student", student_dir, "--out", os.path.join(work, "out"), "--steps", str(steps),
               "--train-tokens", str(train_tokens), "--teacher-samples", str(args.teacher_samples), "--heldout-tokens", "2048",
               "--checkpoint-every", "10", "--output-json", os.path.join(work, "report.json")]
        if args.lr is not None:
            cli += ["--lr", str(args.lr)]
        started = time.perf_counter()
        assert corral_main(cli) == 0
        report = json.load(open(os.path.join(work, "report.json")))
        report.pop("step_losses_all", None)
        result["run"] = {"command": "corral " + " ".join(cli), "wall_seconds": time.perf_counter() - started,
                         "config": dataclasses.asdict(config) | {"steps": steps, "learning_rate": args.lr or config.learning_rate}, "report": report}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
