"""lm-evaluation-harness end to end against `corral serve`: its ``local-completions`` model scores a small local
loglikelihood task (echo with logprobs over token-id prompts, tokenized through the server's /tokenizer_info and
/tokenize), and the loglikelihood it reports for each document is the sum of the offline engine's prompt logprobs
over the continuation's tokens. Nothing is downloaded: the task reads a JSONL file written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from corral import LLM, SamplingParams

MODEL_NAME = "SmolLM2-135M-Instruct"
SERVE_ARGS = ("--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2), "--batch-invariant")
DOCS = [
    {"context": "The capital of France is", "continuation": " Paris"},
    {"context": "Water boils at one hundred degrees", "continuation": " Celsius at sea level."},
    {"context": "The quick brown fox jumps over the", "continuation": " lazy dog"},
    {"context": "def add(a, b):\n   ", "continuation": " return a + b"},
]
TASK_YAML = """\
task: corral_tiny_loglikelihood
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
"""
# Run in a child process, so that the HF offline switches hold from the first import of datasets.
RUN_LM_EVAL = textwrap.dedent("""\
    import json, sys
    import lm_eval
    from lm_eval.tasks import TaskManager

    base, task_dir, out = sys.argv[1:]
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={MODEL_NAME},base_url={base}/v1/completions,tokenizer_backend=remote,"
                   "tokenized_requests=True,num_concurrent=1,max_retries=1,batch_size=2",
        tasks=["corral_tiny_loglikelihood"], task_manager=TaskManager(include_path=task_dir), log_samples=True,
    )
    samples = results["samples"]["corral_tiny_loglikelihood"]
    json.dump([{"doc": s["doc"], "resp": s["resps"][0][0]} for s in samples], open(out, "w"))
""").replace("{MODEL_NAME}", MODEL_NAME)


def test_lm_eval_loglikelihoods_equal_the_engine_prompt_logprobs(corral_serve, tmp_path):
    base = corral_serve(*SERVE_ARGS)
    data_file = tmp_path / "docs.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "corral_tiny.yaml").write_text(TASK_YAML.format(data_file=data_file))
    out = tmp_path / "samples.json"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "OPENAI_API_KEY": ""}
    run = subprocess.run([sys.executable, "-c", RUN_LM_EVAL, base, str(task_dir), str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    samples = json.loads(out.read_text())
    assert sorted(s["doc"]["context"] for s in samples) == sorted(d["context"] for d in DOCS)

    llm = LLM(max_model_len=512, kv_cache_memory=32 * 1024**2, batch_invariant=True)
    tokenizer = llm.get_tokenizer()
    for sample in samples:
        context, continuation = sample["doc"]["context"], sample["doc"]["continuation"]
        # lm-eval's split: the context's trailing spaces move to the continuation; the whole text's tokens, the
        # context's being its own encoding's length
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped):] + continuation
        ids = tokenizer.encode(context + continuation, add_special_tokens=False)
        num_context = len(tokenizer.encode(context, add_special_tokens=False))
        output = llm.generate(ids, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        entries = output.prompt_logprobs[num_context:]
        want = sum(e[t].logprob for t, e in zip(ids[num_context:], entries, strict=True))
        loglikelihood, is_greedy = sample["resp"]
        assert loglikelihood == pytest.approx(want, abs=1e-3), context
        assert loglikelihood < 0
        assert is_greedy == all(e[t].rank == 1 for t, e in zip(ids[num_context:], entries, strict=True))
