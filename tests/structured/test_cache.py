"""The grammar cache: one compile per distinct spec, however many threads ask at once; a refused spec is not
cached; the least recently used grammar leaves first; compile times are recorded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.errors import GrammarError
from corral.loader.default_model import default_model_path
from corral.loader.tokenizer import load_tokenizer
from corral.sample.params import StructuredOutputsParams
from corral.structured.cache import GrammarCache
from corral.structured.llguidance_backend import LLGuidanceBackend


class CountingBackend:
    """The real backend, counting its compiles (slowed down, so concurrent callers overlap)."""

    def __init__(self, backend: LLGuidanceBackend):
        self.backend, self.name, self.vocab_size = backend, backend.name, backend.vocab_size
        self.compiles: list[StructuredOutputsParams] = []
        self._lock = threading.Lock()

    def compile(self, spec):
        with self._lock:
            self.compiles.append(spec)
        time.sleep(0.05)
        return self.backend.compile(spec)


@pytest.fixture(scope="module")
def backend():
    tokenizer = load_tokenizer(default_model_path())
    return LLGuidanceBackend(tokenizer.backend.to_str(), [tokenizer.eos_token_id])


def test_concurrent_requests_for_one_spec_compile_it_once(backend):
    counting = CountingBackend(backend)
    cache = GrammarCache(counting)
    spec = StructuredOutputsParams(regex="[a-z]+")
    with ThreadPoolExecutor(8) as pool:
        grammars = list(pool.map(lambda _: cache.compile(spec), range(8)))
    assert counting.compiles == [spec]
    assert all(g is grammars[0] for g in grammars)
    assert len(cache.stats.compile_seconds) == 1


def test_a_refused_spec_is_not_cached(backend):
    counting = CountingBackend(backend)
    cache = GrammarCache(counting)
    bad = StructuredOutputsParams(regex="((")
    for _ in range(2):
        with pytest.raises(GrammarError):
            cache.compile(bad)
    assert counting.compiles == [bad, bad]


def test_the_least_recently_used_grammar_leaves_first(backend):
    counting = CountingBackend(backend)
    cache = GrammarCache(counting, capacity=2)
    a, b, c = (StructuredOutputsParams(choice=(x,)) for x in "abc")
    cache.compile(a), cache.compile(b), cache.compile(a), cache.compile(c)  # b is the oldest when c arrives
    cache.compile(a)
    cache.compile(b)
    assert counting.compiles == [a, b, c, b]
