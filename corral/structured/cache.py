"""Compiled grammars, one per distinct spec, shared by every request that asks for it.

Compiling is the slow part of structured output (a JSON Schema: milliseconds to seconds). The server compiles
a request's spec on a worker thread before the request reaches the engine (``compile``), so the engine's step
thread only ever finds it here; two requests with the same spec wait for one compile.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future

from corral.sample.params import StructuredOutputsParams
from corral.structured.backend import CompiledGrammar, GrammarBackend, GrammarMatcher

_RECENT = 4096  # timings kept for the metrics to drain; older ones are dropped


class StructuredOutputStats:
    """Recent compile and per-step mask timings (seconds), drained by the server's metrics."""

    def __init__(self) -> None:
        self.compile_seconds: deque[float] = deque(maxlen=_RECENT)
        self.mask_seconds: deque[float] = deque(maxlen=_RECENT)

    @staticmethod
    def drain(timings: deque[float]) -> list[float]:
        drained = []
        while timings:
            drained.append(timings.popleft())
        return drained


class GrammarCache:
    """An LRU of compiled grammars over one backend; ``compile`` is safe from any thread."""

    def __init__(self, backend: GrammarBackend, capacity: int = 256):
        self.backend = backend
        self.capacity = capacity
        self.stats = StructuredOutputStats()
        self._lock = threading.Lock()
        self._grammars: OrderedDict[StructuredOutputsParams, Future[CompiledGrammar]] = OrderedDict()

    def compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        """The compiled grammar for ``spec``, compiling it on this thread unless another already is; raises
        ``GrammarError`` for a spec the backend refuses (the refusal is not cached)."""
        with self._lock:
            future = self._grammars.get(spec)
            owner = future is None
            if owner:
                future = self._grammars[spec] = Future()
                while len(self._grammars) > self.capacity:
                    self._grammars.popitem(last=False)
            else:
                self._grammars.move_to_end(spec)
        if owner:
            start = time.perf_counter()
            try:
                future.set_result(self.backend.compile(spec))
            except BaseException as error:
                with self._lock:
                    if self._grammars.get(spec) is future:
                        del self._grammars[spec]
                future.set_exception(error)
            self.stats.compile_seconds.append(time.perf_counter() - start)
        return future.result()

    def matcher(self, spec: StructuredOutputsParams) -> GrammarMatcher:
        return self.compile(spec).matcher()
