"""OutputProcessor, fed token by token as the engine feeds it: stop strings that span several tokens cut
the text, and no streamed (cumulative) text ever shows a part of a stop string that is later taken back.
The oracles are plain string operations on the full decode, not the processor's own logic."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.engine.batch import EngineCoreOutput, SampledToken
from corral.engine.output_processor import OutputProcessor
from corral.loader.default_model import default_model_path
from corral.outputs import Logprob
from corral.sample.params import SamplingParams
from corral.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The default model's byte-level BPE tokenizer (ASCII text round-trips through it exactly)."""
    return Tokenizer.from_gguf(default_model_path())


def stream(
    tokenizer: Tokenizer, token_ids: Sequence[int], params: SamplingParams, steps: Sequence[int] | None = None
) -> tuple[list[str], str, str | None, str | int | None, list[int]]:
    """Feed ``token_ids`` to a real OutputProcessor, ``steps[i]`` tokens at step i (one per step by default);
    the last step says the core finished the request by length, as the engine would.

    Returns (the cumulative text after each step, final text, finish reason, stop reason, the steps at
    which the processor reported a stop string). Steps after the request finished must produce nothing.
    """
    steps = list(steps) if steps is not None else [1] * len(token_ids)
    assert sum(steps) == len(token_ids)
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1, 2, 3], params, ["r"])
    texts, stopped_at, final = [], [], None
    start = 0
    for step, count in enumerate(steps):
        last = start + count == len(token_ids)
        core = EngineCoreOutput(
            "r", list(token_ids[start : start + count]), finish_reason="length" if last else None
        )
        start += count
        outputs, stopped = processor.process([core])
        if final is not None:
            assert outputs == [] and stopped == [], "a finished request must not produce more output"
            continue
        (output,) = outputs
        completion = output.outputs[0]
        texts.append(completion.text)
        if stopped:
            assert stopped == ["r"]
            stopped_at.append(step)
        if output.finished:
            final = completion
    assert final is not None and not processor.has_request("r")
    return texts, final.text, final.finish_reason, final.stop_reason, stopped_at


def token_spans(tokenizer: Tokenizer, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token in the decoded text (ASCII: one token's text each)."""
    spans, offset = [], 0
    for token_id in token_ids:
        piece = tokenizer.decode([token_id])
        spans.append((offset, offset + len(piece)))
        offset += len(piece)
    return spans


def assert_prefix_chain(texts: Sequence[str], final: str) -> None:
    """Streamed text only ever grows, and what was shown is never taken back."""
    for before, after in zip(texts, [*texts[1:], final]):
        assert after.startswith(before), f"{before!r} was streamed but the text became {after!r}"


def test_stop_string_spanning_five_tokens_is_never_streamed_in_part(tokenizer):
    """The hold-back: ``<|end|>`` arrives over five tokens; none of its characters is ever streamed."""
    text = "The STOP sign <|end|> is red."
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    stop = "<|end|>"
    start = text.index(stop)
    spanned = [
        i for i, (a, b) in enumerate(token_spans(tokenizer, token_ids)) if a < start + len(stop) and b > start
    ]
    assert len(spanned) >= 3, "the stop string must span several tokens for this test to mean anything"
    # ... and it starts inside a token (" <"), so the token that brings its first character also brings text to show
    assert token_spans(tokenizer, token_ids)[spanned[0]][0] < start

    texts, final, finish_reason, stop_reason, stopped_at = stream(
        tokenizer, token_ids, SamplingParams(stop=[stop])
    )
    assert final == "The STOP sign "
    assert (finish_reason, stop_reason) == ("stop", stop)
    assert stopped_at == [spanned[-1]]  # reported on the token that completes it, for the engine to abort
    assert_prefix_chain(texts, final)
    assert all("<" not in t and "|" not in t for t in texts)
    # Not held back more than needed: the space before "<" went out with the token " <".
    assert texts[spanned[0]] == "The STOP sign "


def test_false_start_is_held_then_released(tokenizer):
    """Text that only looks like the start of a stop string is held while it might be one, then streamed."""
    text = "a <|x| and <|en but not the end"
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    texts, final, finish_reason, stop_reason, stopped_at = stream(
        tokenizer, token_ids, SamplingParams(stop=["<|end|>"])
    )
    assert (final, finish_reason, stop_reason, stopped_at) == (text, "length", None, [])
    assert_prefix_chain(texts, final)
    spans = token_spans(tokenizer, token_ids)
    for (_, end), shown in zip(spans, texts[:-1]):
        visible = text[:end]
        # exactly the tail that is a proper prefix of "<|end|>" is held back, nothing else
        held = max(k for k in range(len("<|end|>")) if visible.endswith("<|end|>"[:k]))
        assert shown == visible[: len(visible) - held]


def test_include_stop_str_in_output_streams_it_whole_at_the_end(tokenizer):
    """With include_stop_str_in_output the stop string is emitted once complete, never a piece before."""
    text = "x = 1\n### END ###\nmore"
    token_ids = tokenizer.encode(text)
    params = SamplingParams(stop=["### END"], include_stop_str_in_output=True)
    texts, final, finish_reason, stop_reason, _ = stream(tokenizer, token_ids, params)
    assert (final, finish_reason, stop_reason) == ("x = 1\n### END", "stop", "### END")
    assert_prefix_chain(texts, final)
    assert all("#" not in t for t in texts[:-1])


# ---- any text, any stop strings, any number of tokens per step, against a brute-force oracle ------------

_ALPHABET = "ab <>|\n"


def first_match(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(end, stop string) of the stop string that completes first in ``text`` (the longest of those ending there)."""
    for end in range(1, len(text) + 1):
        hits = [s for s in stops if text.endswith(s, 0, end)]
        if hits:
            return end, max(hits, key=len)
    return None


def held_back(text: str, stops: Sequence[str]) -> int:
    """The longest tail of ``text`` that is a proper prefix of some stop string."""
    return max(k for s in stops for k in range(min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k]))


def cut(text: str, match: tuple[int, str], include: bool) -> str:
    end, stop = match
    return text[:end] if include else text[: end - len(stop)]


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, min_size=1, max_size=40),
    stops=st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=5), min_size=1, max_size=3),
    include=st.booleans(),
    data=st.data(),
)
def test_streamed_text_matches_a_brute_force_oracle(tokenizer, text, stops, include, data):
    """After every step the cumulative text is the decode so far minus exactly the tail that may start a stop
    string; the final text is cut at the first completed stop string, however the tokens are grouped in steps."""
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    steps: list[int] = []
    while sum(steps) < len(token_ids):
        steps.append(data.draw(st.integers(1, min(3, len(token_ids) - sum(steps)))))
    params = SamplingParams(stop=stops, include_stop_str_in_output=include)
    texts, final, finish_reason, stop_reason, stopped_at = stream(tokenizer, token_ids, params, steps)

    assert_prefix_chain(texts, final)
    match = first_match(text, stops)
    if match is None:
        assert (final, finish_reason, stop_reason, stopped_at) == (text, "length", None, [])
    else:
        assert (final, finish_reason, stop_reason) == (cut(text, match, include), "stop", match[1])
    num_done = 0
    for step, (count, shown) in enumerate(zip(steps, texts)):
        num_done += count
        visible = tokenizer.decode(token_ids[:num_done])
        step_match = first_match(visible, stops)
        if step_match is not None:  # the step that completed the first stop string ends the stream
            assert shown == final and step == len(texts) - 1
            assert stopped_at == ([] if num_done == len(token_ids) else [step])
        elif num_done < len(token_ids):
            assert shown == visible[: len(visible) - held_back(visible, stops)]


# ---- the RequestOutput's fields, logprobs, several completions, aborted requests --------------------------


def core(child_id: str, token_ids: Sequence[int], **fields) -> EngineCoreOutput:
    return EngineCoreOutput(child_id, list(token_ids), **fields)


def test_logprobs_carry_the_sampled_rank_the_top_k_ranks_and_each_token_text(tokenizer):
    """Column 0 is the sampled token with its own rank, then the top-k by rank 1, 2, ...; a sampled token that is
    also in the top-k appears once, with its sampled rank; special tokens show their text."""
    (hello,), (world,), (im_end,) = (tokenizer.encode(s) for s in ("Hello", " world", "<|im_end|>"))
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1], SamplingParams(logprobs=2), ["r"])
    step1 = SampledToken(world, [world, hello, im_end], [-2.5, -0.5, -1.0], rank=3)
    (out,), _ = processor.process([core("r", [world], new_logprobs=[step1])])
    (first,) = out.outputs[0].logprobs
    assert list(first) == [world, hello, im_end]
    assert first[world] == Logprob(-2.5, 3, " world")
    assert first[hello] == Logprob(-0.5, 1, "Hello")
    assert first[im_end] == Logprob(-1.0, 2, "<|im_end|>")

    # Two tokens in one step (speculative decoding); the second was the most likely token.
    step2 = [
        SampledToken(hello, [hello, hello, world], [-0.25, -0.25, -3.0], rank=1),
        SampledToken(world, [world, world, im_end], [-0.75, -0.75, -2.0], rank=1),
    ]
    (out,), _ = processor.process([core("r", [hello, world], new_logprobs=step2, finish_reason="length")])
    completion = out.outputs[0]
    assert completion.token_ids == [world, hello, world]
    assert completion.text == " worldHello world"
    assert completion.logprobs[1:] == [
        {hello: Logprob(-0.25, 1, "Hello"), world: Logprob(-3.0, 2, " world")},
        {world: Logprob(-0.75, 1, " world"), im_end: Logprob(-2.0, 2, "<|im_end|>")},
    ]


@pytest.mark.parametrize("num_logprobs", [None, 0])
def test_logprobs_are_none_unless_requested(tokenizer, num_logprobs):
    """``logprobs=None`` gives no list at all; ``logprobs=0`` a list holding only the sampled token."""
    (world,) = tokenizer.encode(" world")
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1], SamplingParams(logprobs=num_logprobs), ["r"])
    sampled = [SampledToken(world, [world], [-1.5], rank=4)] if num_logprobs is not None else []
    (out,), _ = processor.process([core("r", [world], new_logprobs=sampled)])
    expected = None if num_logprobs is None else [{world: Logprob(-1.5, 4, " world")}]
    assert out.outputs[0].logprobs == expected


def test_logprobs_missing_from_the_runner_fail_loudly(tokenizer):
    """A request that asked for logprobs must get them for every sampled token."""
    (world,) = tokenizer.encode(" world")
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1], SamplingParams(logprobs=1), ["r"])
    with pytest.raises(AssertionError):
        processor.process([core("r", [world], new_logprobs=[SampledToken(world, [world], None, rank=1)])])


def test_request_output_of_two_completions(tokenizer):
    """The prompt, the cached-token count (completion 0's), a child without tokens yet, and what the core reports
    when a completion ends on a stop token."""
    hello_world = tokenizer.encode("Hello world")
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", "Say hi", [7, 8, 9], SamplingParams(n=2), ["r-0", "r-1"])

    (out,), stopped = processor.process([core("r-0", hello_world, num_cached_tokens=5)])
    assert (out.request_id, out.prompt, out.prompt_token_ids) == ("r", "Say hi", [7, 8, 9])
    assert out.num_cached_tokens == 5
    first, second = out.outputs
    assert (first.index, first.text, first.token_ids) == (0, "Hello world", hello_world)
    assert (second.index, second.text, second.token_ids, second.finished) == (1, "", [], False)
    assert not out.finished and stopped == []

    # Completion 1 ends on stop token 2 after speculative steps; its cached count does not replace completion 0's.
    counts = {"num_cached_tokens": 3, "num_draft_tokens": 4, "num_accepted_tokens": 3}
    (out,), stopped = processor.process([core("r-1", [2], finish_reason="stop", stop_reason=2, **counts)])
    second = out.outputs[1]
    assert (second.finish_reason, second.stop_reason, second.text) == ("stop", 2, "")
    assert (second.num_draft_tokens, second.num_accepted_tokens) == (4, 3)
    assert out.outputs[0].num_draft_tokens == 0
    assert (out.num_cached_tokens, out.finished, stopped) == (5, False, [])


def test_skip_special_tokens_reaches_the_text(tokenizer):
    ids = tokenizer.encode("Hello<|im_end|>")
    for skip, expected in [(True, "Hello"), (False, "Hello<|im_end|>")]:
        processor = OutputProcessor(tokenizer)
        processor.add_request("r", None, [1], SamplingParams(skip_special_tokens=skip), ["r"])
        (out,), _ = processor.process([core("r", ids, finish_reason="length")])
        assert out.outputs[0].text == expected


def test_a_completion_finished_by_a_stop_string_ignores_the_tokens_still_in_flight(tokenizer):
    """The core has not yet aborted the stopped child, so the next step still brings it a token: it must be
    dropped and not reported as stopped again, while the other child goes on."""
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1], SamplingParams(n=2, stop=["STOP"]), ["r-0", "r-1"])
    stop_ids = tokenizer.encode("a STOP")
    (out,), stopped = processor.process([core("r-0", stop_ids), core("r-1", tokenizer.encode("x"))])
    assert stopped == ["r-0"] and out.outputs[0].text == "a "
    step = [core("r-0", tokenizer.encode(" b")), core("r-1", tokenizer.encode("y"))]
    (out,), stopped = processor.process(step)
    stopped_child, running_child = out.outputs
    assert stopped == []
    assert (stopped_child.text, stopped_child.token_ids) == ("a ", stop_ids)
    assert (stopped_child.finish_reason, stopped_child.stop_reason) == ("stop", "STOP")
    assert running_child.text == "xy"


def test_outputs_of_an_aborted_request_are_skipped_not_the_rest_of_the_step(tokenizer):
    processor = OutputProcessor(tokenizer)
    for request_id in ("gone", "live"):
        processor.add_request(request_id, None, [1], SamplingParams(), [request_id])
    assert processor.abort("gone") == ["gone"] and not processor.has_request("gone")
    step = [core("gone", tokenizer.encode("x")), core("live", tokenizer.encode("ok"))]
    outputs, _ = processor.process(step)
    assert [(o.request_id, o.outputs[0].text) for o in outputs] == [("live", "ok")]
