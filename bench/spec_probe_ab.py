"""A/B of a draft model's probe spacing (engine/spec_policy.py): the same draft engine with probes every 16
tokens, as before 2026-12-07, and with the spacing that backs off on failed probes, one request at a time,
each run paired with speculation off just before it; medians of the paired speed-ups.

    .venv/bin/python bench/spec_probe_ab.py --draft-model DIR [--repeats 4] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from dataclasses import replace

import spec_decode
from workloads import provenance

from corral import LLM
from corral.engine.request import Request
from corral.engine.spec_policy import SpeculationPolicy


class FixedProbes(SpeculationPolicy):
    """The policy as it was: a one-draft probe every ``probe_interval`` tokens, whatever a probe costs."""

    def _probe_due(self, request: Request, history: object) -> bool:
        return request.num_output_tokens % self.probe_interval == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft-model", required=True, metavar="DIR")
    parser.add_argument("--draft-quantization", default="int4")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--output", default="bench/results/spec_probe_ab.json")
    args = parser.parse_args()

    common = dict(max_model_len=1024, kv_cache_memory=128 * 1024**2)
    off = LLM(**common)
    draft = LLM(**common, speculative_config={"method": "draft_model", "num_speculative_tokens": 8,
                                              "quantization": args.draft_quantization, "model": args.draft_model})
    core = draft.engine.core
    policies = {"fixed": FixedProbes(core.spec_policy.num_speculative_tokens,
                                     proposer_cost=core.spec_policy.proposer_cost),
                "spaced": core.spec_policy}
    work = spec_decode.workloads(off)
    results = {}
    for name in ("edit (favourable)", "story (unfavourable)"):
        prompts, params = work[name]
        params = replace(params, max_tokens=args.max_tokens)
        pairs: dict[str, list[float]] = collections.defaultdict(list)
        drafted: collections.Counter[str] = collections.Counter()
        for repeat in range(args.repeats):
            order = list(policies) if repeat % 2 == 0 else list(policies)[::-1]
            for prompt in prompts[:3]:
                seconds_off, tokens_off = spec_decode.decode_run(off, prompt, params)
                for label in order:
                    core.spec_policy = policies[label]
                    before = spec_decode.acceptance(draft, (0, 0))
                    seconds, tokens = spec_decode.decode_run(draft, prompt, params)
                    drafted[label] += spec_decode.acceptance(draft, before)[0]
                    pairs[label].append((tokens / seconds) / (tokens_off / seconds_off))
        results[name] = {label: {"speedup_median": statistics.median(values), "pairs": values,
                                 "drafted": drafted[label]} for label, values in pairs.items()}
        print(name, ", ".join(f"{label} probes {statistics.median(values):.2f}x ({drafted[label]} drafts)"
                              for label, values in pairs.items()), flush=True)
    with open(args.output, "w") as f:
        json.dump({**provenance(), "draft_model": args.draft_model, "max_tokens": args.max_tokens,
                   "repeats": args.repeats, "results": results}, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
