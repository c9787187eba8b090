"""LLMEngine: aborts at any point leave no blocks behind; other requests keep running."""

from corral import SamplingParams


def test_aborts_mid_prefill_and_mid_decode_free_every_block(default_llm):
    engine = default_llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    long_prompt = "Tell me everything about the sea. " * 40
    engine.add_request("keep", "The sky is blue because", params)
    engine.add_request("abort-decode", "Numbers: 1 2 3", params)
    engine.add_request("abort-prefill", long_prompt, params)
    engine.add_request("abort-waiting", long_prompt + " again", params)
    engine.abort_request("abort-waiting")
    engine.step()
    engine.step()
    engine.abort_request("abort-prefill")
    engine.abort_request("abort-decode")
    engine.abort_request("never-existed")
    finished = {}
    for _ in range(100):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        if not engine.has_unfinished_requests():
            break
    assert list(finished) == ["keep"]
    assert len(finished["keep"].outputs[0].token_ids) == 12
    kv = engine.core.kv_manager
    assert kv.num_free_blocks == kv.num_blocks and not kv.block_tables


def test_duplicate_request_id_is_rejected(default_llm):
    import pytest

    from corral.errors import InvalidRequestError

    engine = default_llm.engine
    engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError):
        engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    engine.abort_request("dup")
    assert not engine.has_unfinished_requests()
