"""Greedy output on the packed path (the GGUF's own blocks on the block kernels, int8 K/V: the default where
the CPU has no AMX) does not depend on the prefix cache, n, the batch around a request or speculation: a request whose prompt comes from the prefix cache computes
its prompt's last block on the same per-token kernel as when it computes the whole prompt
(``engine/input_builder.split_for_attention``).

What stays outside this guarantee, and needs ``batch_invariant=True``: prompts whose prefill is split into
chunks at different places (a prompt longer than the step's token budget left, under load), prefix-cache
hits shorter than the prompt's last block (a shared system prompt, a partly evicted prefix) and
recomputation after preemption: dense prefill attention rounds differently for different chunk shapes. Nor
does it hold with ``batched_linears="bf16"`` (the default on AMX hosts): a row's linears then run packed or on
the bf16 copy depending on how many rows share its step.

Every test runs on both prefill attentions: SDPA, whose rounding depends on the chunk's shape (what the
per-token tails are for, on every CPU without AVX-512), and the C++ kernel where it runs, whose rows do not."""

from __future__ import annotations

import pytest

from corral import LLM, SamplingParams
from corral.engine.batch import ScheduledRequest
from corral.engine.input_builder import split_for_attention
from corral.engine.request import Request
from corral.kernels import cpu_extension
from corral.layers.attention.torch_paged import TorchPagedAttention

_EXTENSION = cpu_extension.load()
PREFILL_PATHS = ["sdpa"] + (["kernel"] if _EXTENSION is not None and _EXTENSION.prefill_attention_supported(64) else [])

CHATS = [
    "Here is a short story about a lighthouse keeper:",
    "Write a poem about the sea.",
    "Explain how a CPU cache works.",
    "What is the capital of Australia? Explain its history.",
    "List five facts about owls.",
    "How do I bake sourdough bread?",
    "Tell me a joke about programmers.",
    "Describe a sunrise over mountains.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


ENGINE = dict(max_model_len=1024, kv_cache_memory=64 * 1024**2, batched_linears="packed", prefill_attention="model")


@pytest.fixture(scope="module", params=PREFILL_PATHS, autouse=True)
def prefill_path(request):
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "sdpa":
            patch.setattr(TorchPagedAttention, "_prefill_kernel", lambda self, device: None)
        yield request.param


@pytest.fixture(scope="module")
def llm(prefill_path: str) -> LLM:
    return LLM(**ENGINE)


@pytest.fixture(scope="module")
def uncached(prefill_path: str) -> LLM:
    """The reference: every prompt computed from scratch, alone."""
    return LLM(enable_prefix_caching=False, **ENGINE)


def chat_prompts(llm: LLM) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    return [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
        for text in CHATS
    ]


def token_ids(outputs) -> list[list[int]]:
    return [completion.token_ids for output in outputs for completion in output.outputs]


def test_prompt_tails_are_split_off_per_token():
    """Positions from the prompt's last block on are per-token rows; the rest of the chunk stays dense."""
    params = SamplingParams(max_tokens=4)

    def entry(num_prompt: int, computed: int, new: int) -> ScheduledRequest:
        request = Request("r", list(range(num_prompt)), params, max_model_len=64)
        return ScheduledRequest(request, computed, new, block_ids=list(range(16)))

    # block_size 4: a 10-token prompt's last block starts at 8; 8-token prompt's at 4
    per_token, chunks = split_for_attention([entry(10, 0, 10), entry(8, 4, 4), entry(10, 0, 6)], 4)
    assert [(p.entry, p.start, p.num_tokens) for p in per_token] == [(0, 8, 2), (1, 4, 4)]
    assert [(p.entry, p.start, p.num_tokens) for p in chunks] == [(0, 0, 8), (2, 0, 6)]


@pytest.fixture(scope="module")
def alone(uncached: LLM) -> list[list[int]]:
    return [token_ids(uncached.generate([p], GREEDY, use_tqdm=False))[0] for p in chat_prompts(uncached)]


def test_prefix_cache_hits_give_the_same_greedy_tokens(llm: LLM, alone: list[list[int]]):
    for prompt, expected in zip(chat_prompts(llm), alone, strict=True):
        first, again = (llm.generate([prompt], GREEDY, use_tqdm=False)[0] for _ in range(2))
        assert again.num_cached_tokens > 0, "the repeat did not hit the prefix cache: the test proves nothing"
        assert [first.outputs[0].token_ids, again.outputs[0].token_ids] == [expected, expected]


def test_n_choices_and_batches_give_the_same_greedy_tokens(llm: LLM, uncached: LLM, alone: list[list[int]]):
    prompts = chat_prompts(llm)
    assert token_ids(uncached.generate(prompts, GREEDY, use_tqdm=False)) == alone  # one batch, from scratch
    assert token_ids(llm.generate(prompts, GREEDY, use_tqdm=False)) == alone  # one batch, from the cache
    n3 = SamplingParams(n=3, temperature=0, max_tokens=48, ignore_eos=True)
    for prompt, expected in zip(prompts[:3], alone, strict=False):
        assert token_ids(llm.generate([prompt], n3, use_tqdm=False)) == [expected] * 3
        assert token_ids(uncached.generate([prompt], n3, use_tqdm=False)) == [expected] * 3


def test_speculation_on_and_off_give_the_same_greedy_tokens(llm: LLM):
    """A copy task (n-gram drafts get accepted), repeated so later runs hit the prefix cache. With the prompt's
    last block computed densely on a cache hit (the bug this guards), this prompt's repeats fork."""
    text = "Say this three times: one two three, one two three, one two three. Say it again:"
    spec = LLM(speculative_config={"method": "ngram", "num_speculative_tokens": 5}, **ENGINE)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    plain_runs = [token_ids(llm.generate([text], params, use_tqdm=False))[0] for _ in range(3)]
    spec_outputs = [spec.generate([text], params, use_tqdm=False)[0] for _ in range(3)]
    assert sum(o.outputs[0].num_accepted_tokens for o in spec_outputs) > 0, "no draft accepted: test proves nothing"
    assert plain_runs == [plain_runs[0]] * 3
    assert [o.outputs[0].token_ids for o in spec_outputs] == plain_runs
