"""vLLM (CPU) offline runner; runs inside the .bench/vllm venv, never imports corral.

``LLM.generate`` on token-id prompts, greedy, ``ignore_eos``; bf16 where /proc/cpuinfo shows
``avx512_bf16`` and float32 elsewhere (vLLM's fastest on each host, shared/MACHINE.md). It needs the GGUF
dequantized into an HF directory first (bench/convert_gguf.py) and, set before vLLM is imported,
VLLM_CPU_OMP_THREADS_BIND=0-1 (otherwise one of the two cores is left idle) and VLLM_CPU_KVCACHE_SPACE=1
(GiB). Protocol and job format: bench/peers/common.py. The driver bench/run.py starts it as

    .bench/vllm/bin/python bench/peers/vllm_offline.py --job JOB.json --model .bench/smollm2-hf [--arg k=v]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, load_job, parse_args, parse_kv, run_job  # noqa: E402


def best_dtype() -> str:
    """bfloat16 where the CPU computes it natively, float32 elsewhere (bf16 is ~5x slower there)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "bfloat16" if "avx512_bf16" in f.read() else "float32"
    except OSError:
        return "float32"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    job = load_job(args.job)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm
    from vllm import LLM, SamplingParams

    options = {"dtype": best_dtype(), "max_model_len": 4096, "seed": 0, **parse_kv(args.arg)}
    start = time.perf_counter()
    llm = LLM(model=args.model, **options)
    load_s = time.perf_counter() - start

    def generate(prompts: Sequence[Sequence[int]], max_tokens: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [len(o.outputs[0].token_ids) for o in outputs]

    result = run_job(job, generate)
    result.update(system="vLLM", version=vllm.__version__, load_s=load_s, threads=args.threads,
                  batching="continuous", options={k: str(v) for k, v in options.items()},
                  env={k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")})
    emit(result)


if __name__ == "__main__":
    main()
