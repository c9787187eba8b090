"""Speculative decoding on the default model: decode speed with speculation off vs on, one request at a time
and 8 at once, on workloads where it should help (fixing typos in a given paragraph or in a document of four
paragraphs, continuing repetitive code) and one where it should not (a free-form story, sampled), with the
draft acceptance rate. llama.cpp with and without its own prompt-lookup speculation (llama-cpp-python's
LlamaPromptLookupDecoding) runs the same single-request prompts in the same run, as the peer reference.

Single request: decode tok/s = tokens after the first / time from the first token to the last, over the
workload's first 3 prompts, each prompt run by every engine in turn; the speed-up is the median over all
(repeat, prompt) pairs of on / off. Batch 8: output tokens / wall time of all 8 prompts at once, every engine
in turn; the speed-up is the median of the repeats' on / off ratios. Rates are medians over ``--repeats``.

    .venv/bin/python bench/spec_decode.py [--repeats 5] [--max-tokens 192] [--num-speculative-tokens 8]
        [--prompt-lookup-max 8] [--draft-num-layers 8 | --draft-model DIR [--draft-quantization int4]]
        [--llama-python .bench/llamacpp/bin/python]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

from workloads import provenance

from corral import LLM, SamplingParams

PARAGRAPHS = [
    "The comittee met on tuesday to discus the new budjet. After a long debate, the members agreed to fund the "
    "library repairs, the park cleanup and the after-school program, but they postponed the decision on the "
    "new bus route until the next meeting, when the traffic study will be finished.",
    "Our team shiped the release on friday. It fixes the login bug, speeds up the search page and adds dark "
    "mode. Please update you clients before monday, because the old version will stop working when we turn "
    "off the legacy API at the end of the month.",
    "The recipe is simple: mix two cups of flour with one cup of water, a pinch of salt and a spoon of "
    "olive oil. Knead the dough for ten minuts, let it rest for an hour, then roll it thin and bake it in a "
    "very hot oven untill the edges are golden.",
    "Yesterday the weather was perfect for a walk. We left early, followed the river to the old mill, had "
    "lunch under the big oak tree and came back through the forrest, just before the rain started in the "
    "late afternoon.",
]
CODE = [
    "def add(a, b):\n    return a + b\n\n\ndef subtract(a, b):\n    return a - b\n\n\ndef multiply(a, b):\n"
    "    return a * b\n\n\ndef divide(a, b):\n    return a / b\n\n\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "class Size:\n    def __init__(self, width, height):\n        self.width = width\n        self.height = height\n\n",
    "config = {\n    'host': 'localhost',\n    'port': 8080,\n    'debug': True,\n}\n\n"
    "test_config = {\n    'host': 'localhost',\n    'port': 8081,\n",
    "import os\nimport sys\nimport json\n\n\ndef load_json(path):\n    with open(path) as f:\n        return json.load(f)\n\n\n"
    "def save_json(path, data):\n    with open(path, 'w') as f:\n",
]
STORIES = ["a dragon who learns to paint", "a lighthouse keeper and a lost whale", "a robot that collects rain",
           "two rival bakers in a small town", "a map that redraws itself", "the last train of the night",
           "a garden on the moon", "a clock that runs backwards"]


def workloads(llm: LLM) -> dict[str, tuple[list[list[int]], SamplingParams]]:
    tokenizer = llm.get_tokenizer()

    def chat(text: str) -> list[int]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return tokenizer.encode(prompt, add_special_tokens=False)

    instruction = "Fix the spelling mistakes in this text. Reply with the corrected text only.\n\n"
    edit = [chat(instruction + p) for p in PARAGRAPHS * 2]
    # the four paragraphs as one document, in each of their 4 rotations
    documents = [chat(instruction + "\n\n".join(PARAGRAPHS[i:] + PARAGRAPHS[:i])) for i in range(len(PARAGRAPHS))]
    code = [tokenizer.encode(c) for c in CODE * 2]
    stories = [chat(f"Write a short story about {s}.") for s in STORIES]
    return {
        "edit (favourable)": (edit, SamplingParams(temperature=0.0, max_tokens=16)),
        "edit document (favourable)": (documents * 2, SamplingParams(temperature=0.0, max_tokens=16)),
        "code (favourable)": (code, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)),
        "story (unfavourable)": (stories, SamplingParams(temperature=0.8, top_p=0.95, seed=0, max_tokens=16,
                                                         ignore_eos=True)),
    }


def timed(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outputs)


def decode_run(llm: LLM, prompt: list[int], params: SamplingParams) -> tuple[float, int]:
    """Seconds and tokens of one request's decode: from its first token (the end of its prefill) to its last."""
    engine = llm.engine
    engine.add_request(engine.next_request_id(), salted(prompt), params)
    first_at, first_count, count = 0.0, 0, 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            count = len(output.outputs[0].token_ids)
            if not first_count and count:
                first_at, first_count = time.perf_counter(), count
    return time.perf_counter() - first_at, count - first_count


_salts = itertools.count(1000)


def salted(prompt: list[int]) -> list[int]:
    """The prompt with a fresh token after its first: no run is served from the prefix cache another left."""
    return [prompt[0], next(_salts), *prompt[1:]]


def batch_rate(llm: LLM, prompts: list[list[int]], params: SamplingParams, max_tokens: int) -> float:
    elapsed, tokens = timed(llm, [salted(p) for p in prompts], replace(params, max_tokens=max_tokens))
    return tokens / elapsed


def acceptance(llm: LLM, since: tuple[int, int]) -> tuple[int, int]:
    stats = llm.engine.core.scheduler.spec_decode_stats
    return stats.num_draft_tokens - since[0], stats.num_accepted_tokens - since[1]


def llama_cpp(python: str, model: str, work: dict[str, Any], max_tokens: int, lookup: int) -> dict[str, float]:
    """Single-request decode tok/s per workload (greedy, EOS banned: the runner's protocol)."""
    job = {"max_tokens": max_tokens, "single": {}, "workloads": {
        name: {"warmup": [prompts[0]], "runs": [[p] for p in prompts[:3]]} for name, (prompts, _) in work.items()
    }}
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "llamacpp_offline.py")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    args = [python, runner, "--job", f.name, "--model", model, "--threads", str(os.cpu_count() or 1)]
    if lookup:
        args += ["--arg", f"prompt_lookup={lookup}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))[13:])
    os.unlink(f.name)
    return {name: sum(r["output_tokens"] for r in runs) / sum(r["seconds"] for r in runs)
            for name, runs in result["workloads"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--num-speculative-tokens", type=int, default=8)
    parser.add_argument("--prompt-lookup-max", type=int, default=8)
    parser.add_argument("--draft-num-layers", type=int, default=8,
                        help="also run the draft-model proposer, alone and behind the n-gram lookup "
                             "(ngram_draft): the target's first N layers (0: skip both)")
    parser.add_argument("--draft-model", default=None, metavar="DIR",
                        help="the draft-model proposer runs this draft (e.g. from corral distill --draft-for) "
                             "instead of the target's first --draft-num-layers layers")
    parser.add_argument("--draft-quantization", default="auto", help="the draft model's weights (speculative_config)")
    parser.add_argument("--draft-head", default=None, metavar="DIR",
                        help="also run the draft-head proposer with this head (corral distill --draft-head-for)")
    parser.add_argument("--head-speculative-tokens", type=int, default=3,
                        help="num_speculative_tokens of the draft-head engine")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    parser.add_argument("--llama-python", default=".bench/llamacpp/bin/python")
    parser.add_argument("--output", default="bench/results/spec_decode.json")
    parser.add_argument("--workloads", default="", help="comma-separated name prefixes to run (default: all)")
    args = parser.parse_args()

    common = dict(max_model_len=1024, kv_cache_memory=128 * 1024**2)
    engines = {
        "off": LLM(**common),
        "ngram": LLM(**common, speculative_config={"method": "ngram",
                                                   "num_speculative_tokens": args.num_speculative_tokens,
                                                   "prompt_lookup_max": args.prompt_lookup_max}),
    }
    if args.draft_num_layers or args.draft_model:
        draft = {"model": args.draft_model} if args.draft_model else {"draft_num_layers": args.draft_num_layers}
        engines["draft"] = LLM(**common, speculative_config={
            "method": "draft_model", "num_speculative_tokens": args.num_speculative_tokens,
            "quantization": args.draft_quantization, **draft})
        engines["ngram_draft"] = LLM(**common, speculative_config={
            "method": "ngram_draft", "num_speculative_tokens": args.num_speculative_tokens,
            "prompt_lookup_max": args.prompt_lookup_max, "quantization": args.draft_quantization, **draft})
    if args.draft_head:
        engines["draft_head"] = LLM(**common, speculative_config={
            "method": "draft_head", "model": args.draft_head, "num_speculative_tokens": args.head_speculative_tokens,
            "quantization": args.draft_quantization})
    work = workloads(engines["off"])
    if args.workloads:
        prefixes = tuple(p.strip() for p in args.workloads.split(","))
        work = {name: w for name, w in work.items() if name.startswith(prefixes)}
    results: dict[str, Any] = {"max_tokens": args.max_tokens, "num_speculative_tokens": args.num_speculative_tokens,
                               "prompt_lookup_max": args.prompt_lookup_max, "draft_model": args.draft_model,
                               "draft_head": args.draft_head, "head_speculative_tokens": args.head_speculative_tokens,
                               "threads": os.cpu_count(), "corral": {}}
    for name, (prompts, params) in work.items():
        for llm in engines.values():  # warm-up
            llm.generate(prompts[:1], replace(params, max_tokens=8), use_tqdm=False)
        row: dict[str, Any] = {mode: {"single": [], "single_pairs": [], "batch8": [], "drafted": 0, "accepted": 0}
                               for mode in engines}
        single_params = replace(params, max_tokens=args.max_tokens)
        for repeat in range(args.repeats):
            # one prompt at a time, every engine in turn (the order flipped every repeat): the runs compared
            # are seconds apart, so a change in the host's speed hits both sides of a ratio alike
            order = list(engines) if repeat % 2 == 0 else list(engines)[::-1]
            runs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in engines}
            for prompt in prompts[:3]:
                for mode in order:
                    before = acceptance(engines[mode], (0, 0))
                    runs[mode].append(decode_run(engines[mode], prompt, single_params))
                    drafted, accepted = acceptance(engines[mode], before)
                    row[mode]["drafted"] += drafted
                    row[mode]["accepted"] += accepted
            for mode in order:
                row[mode]["batch8"].append(batch_rate(engines[mode], prompts, params, args.max_tokens))
            for mode in engines:
                row[mode]["single"].append(sum(n for _, n in runs[mode]) / sum(s for s, _ in runs[mode]))
                row[mode]["single_pairs"] += [(n / s) / (n_off / s_off) for (s, n), (s_off, n_off)
                                              in zip(runs[mode], runs["off"], strict=True)]
        for mode in row:
            row[mode]["single_median"] = statistics.median(row[mode]["single"])
            row[mode]["batch8_median"] = statistics.median(row[mode]["batch8"])
            row[mode]["single_ratio"] = statistics.median(row[mode]["single_pairs"])
            row[mode]["batch8_ratio"] = statistics.median(  # a repeat's batch runs are neighbours in time
                on / off for on, off in zip(row[mode]["batch8"], row["off"]["batch8"], strict=True))
        results["corral"][name] = row
        off = row["off"]
        for mode in list(engines)[1:]:
            on = row[mode]
            rate = on["accepted"] / on["drafted"] if on["drafted"] else 0.0
            print(f"{name}, {mode}: single {off['single_median']:.1f} -> {on['single_median']:.1f} tok/s "
                  f"({on['single_ratio']:.2f}x), batch 8 {off['batch8_median']:.1f} -> "
                  f"{on['batch8_median']:.1f} tok/s ({on['batch8_ratio']:.2f}x), "
                  f"acceptance {rate:.0%} of {on['drafted']} drafts", flush=True)

    if os.path.exists(args.llama_python) and not args.skip_llama_cpp:
        from corral.loader.default_model import default_model_path

        results["llama.cpp"] = {
            mode: llama_cpp(args.llama_python, default_model_path(), work, args.max_tokens, lookup)
            for mode, lookup in (("off", 0), ("prompt_lookup", 10))
        }
        for name in work:
            off, on = results["llama.cpp"]["off"][name], results["llama.cpp"]["prompt_lookup"][name]
            print(f"llama.cpp {name}: single {off:.1f} -> {on:.1f} tok/s ({on / off:.2f}x)", flush=True)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({**provenance(), **results}, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
