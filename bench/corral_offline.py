"""corral offline runner: the same protocol and job as the peer runners (bench/peers/common.py), run by
the project's venv in its own process so its peak RSS is its own.

``LLM(**corral_args).generate`` on token-id prompts, greedy, ``ignore_eos``. Engine arguments come from
``--arg key=value`` (EngineArgs fields, corral/runtime.py), e.g. ``--arg dtype=bfloat16``. The driver
bench/run.py writes the job and starts this as

    .venv/bin/python bench/corral_offline.py --job JOB.json --model M.gguf [--threads 2] [--arg k=v ...]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from common import emit, load_job, parse_args, parse_kv, run_job  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    job = load_job(args.job)
    import torch

    import corral
    from corral import LLM, SamplingParams

    torch.set_num_threads(args.threads)
    options = {"max_model_len": 4096, **parse_kv(args.arg)}
    start = time.perf_counter()
    llm = LLM(model=args.model, **options)
    load_s = time.perf_counter() - start

    def generate(prompts: Sequence[Sequence[int]], max_tokens: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        outputs = llm.generate([list(p) for p in prompts], params, use_tqdm=False)
        return [len(o.outputs[0].token_ids) for o in outputs]

    result = run_job(job, generate)
    result.update(system="corral", version=getattr(corral, "__version__", "?"), load_s=load_s,
                  threads=torch.get_num_threads(), batching="continuous",
                  options={k: str(v) for k, v in options.items()}, torch=torch.__version__,
                  kv_waste=llm.engine.core.kv_manager.occupancy.waste)
    emit(result)


if __name__ == "__main__":
    main()
