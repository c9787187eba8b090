"""llama.cpp (llama-cpp-python) offline runner; runs inside the .bench/llamacpp venv, never imports corral.

Same GGUF as corral, ``n_threads`` threads, greedy (temperature 0, repeat penalty 1), EOS banned through
``logit_bias={eos: -inf}`` (llama-cpp-python has no ``ignore_eos``), ``logits_all=False``. The Python
API has no batching, so a workload's prompts run one at a time. Protocol and job format:
bench/peers/common.py. The driver bench/run.py writes the job and starts this as

    .bench/llamacpp/bin/python bench/peers/llamacpp_offline.py --job JOB.json --model M.gguf [--threads 2]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, load_job, parse_args, parse_kv, run_job  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    job = load_job(args.job)
    from llama_cpp import Llama, __version__

    options = {"n_ctx": 4096, "n_batch": 512, "logits_all": False, "verbose": False, **parse_kv(args.arg)}
    # --arg prompt_lookup=N: llama-cpp-python's own n-gram speculation (LlamaPromptLookupDecoding), N drafts
    num_lookup = options.pop("prompt_lookup", None)
    if num_lookup:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        options["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=int(num_lookup))
    start = time.perf_counter()
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads, **options)
    load_s = time.perf_counter() - start
    eos_ids = {llm.token_eos(), *job.get("eos_token_ids", [])}
    ban_eos = {int(i): float("-inf") for i in eos_ids if i is not None and i >= 0}

    def generate(prompts: Sequence[Sequence[int]], max_tokens: int) -> list[int]:
        counts = []
        for prompt in prompts:
            out = llm.create_completion(
                prompt=list(prompt), max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0,
                logit_bias=ban_eos,
            )
            counts.append(int(out["usage"]["completion_tokens"]))
        return counts

    result = run_job(job, generate)
    result.update(system="llama.cpp", version=__version__, load_s=load_s, threads=args.threads,
                  batching="none: one prompt at a time", options={k: str(v) for k, v in options.items()})
    emit(result)


if __name__ == "__main__":
    main()
