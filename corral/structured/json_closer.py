"""Closing a JSON document before the token budget runs out.

A grammar can say which tokens may come next, never when to stop: a small model can nest or list without end
inside a schema that allows it (a recursive tree, an open object, an array) and reach ``max_tokens`` with half a
document, which no client can parse. A JSON request's matcher is wrapped here, and its rows change as the output
tokens left approach what closing the document takes (found by playing the closing rules forward):

- near it, no row may open an object or array or write a comma outside a string (a new item or key), unless the
  grammar allows nothing else: the jumps in what closing takes come from those. "Near" is the largest jump seen
  so far in this request (at least ``FIRST_GUESS_JUMP``), so an array of small items is not cut before it must be;
- at it (``CLOSING_MARGIN``), each row allows only the fastest way to close: the tokens that close the most
  brackets and strings; else a comma, where the grammar allows one (a number ends, the next required key
  follows); else a whole scalar value (``0``, ``""``, ``[]``, ...) where one is due; else what the grammar allows
  (a forced key or colon). From there on every row closes (the decision sticks).

A request steered either way ends with ``finish_reason: "length"``: the document parses, and the client still
learns the budget cut it short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from corral.structured.backend import GrammarMatcher

# Tokens left beyond what closing takes (as played) when closing starts: a model may take a longer way than the
# one played among the choices the rules leave it, and a guarded free token can still open a string.
CLOSING_MARGIN = 4
# How much one token may lengthen closing before a larger jump has been seen: ``,{"`` in an array of objects starts
# an item whose required keys must all be written.
FIRST_GUESS_JUMP = 12
# Closing is played forward only once the tokens left are within this many of the brackets still open.
PLAY_WINDOW = 96

_CLOSERS = frozenset(b'"]}')
_VALUES = frozenset([b"0", b"1", b'""', b"[]", b"{}", b"null", b"true", b"false"])


@dataclass(frozen=True)
class JsonScan:
    """Where a compact JSON text stands after some bytes: brackets open, inside a string, after a backslash."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    @property
    def num_open(self) -> int:
        """Brackets and strings still to close (a lower bound on the tokens that closing takes)."""
        return self.depth + self.in_string

    def after(self, data: bytes) -> JsonScan:
        depth, in_string, escaped = self.depth, self.in_string, self.escaped
        for byte in data:
            if in_string:
                if escaped:
                    escaped = False
                elif byte == 0x5C:  # backslash
                    escaped = True
                elif byte == 0x22:  # '"'
                    in_string = False
            elif byte == 0x22:
                in_string = True
            elif byte in (0x7B, 0x5B):  # '{' '['
                depth += 1
            elif byte in (0x7D, 0x5D):  # '}' ']'
                depth -= 1
        return JsonScan(depth, in_string, escaped)

    def expands(self, data: bytes) -> bool:
        """Whether ``data`` opens an object or array or writes a comma outside a string, from here."""
        scan = self
        for i in range(len(data)):
            if not scan.in_string and data[i] in b"{[,":
                return True
            scan = scan.after(data[i : i + 1])
        return False


class ClosingVocabulary:
    """One tokenizer's candidates for closing: the tokens made only of ``"``, ``]`` and ``}``, the comma, the
    tokens that are a whole scalar value, and the end-of-output tokens; the tokens that expand a document (from
    outside a string, and from inside one); plus each token's bytes, for the scan."""

    def __init__(self, token_bytes: list[bytes], eos_token_ids: list[int]):
        self.token_bytes = token_bytes
        self.eos_token_ids = np.array(sorted(eos_token_ids), dtype=np.int64)
        self.num_words = (len(token_bytes) + 31) // 32
        self.closer_ids = np.array([i for i, b in enumerate(token_bytes) if b and set(b) <= _CLOSERS], dtype=np.int64)
        self.comma_ids = np.array([i for i, b in enumerate(token_bytes) if b == b","], dtype=np.int64)
        self.value_ids = np.array([i for i, b in enumerate(token_bytes) if b in _VALUES], dtype=np.int64)
        structural = [i for i, b in enumerate(token_bytes) if any(c in b for c in b"{[,")]
        self.expanding_ids = {
            in_string: np.array([i for i in structural if JsonScan(in_string=in_string).expands(token_bytes[i])],
                                dtype=np.int64)
            for in_string in (False, True)
        }


def allowed_among(row: torch.Tensor, token_ids: np.ndarray) -> np.ndarray:
    """The ids of ``token_ids`` whose bit is set in the bitmask ``row`` ([ceil(vocab / 32)] int32)."""
    words = row.numpy().view(np.uint32)
    inside = token_ids[token_ids < words.size * 32]
    return inside[(words[inside >> 5] >> (inside & 31).astype(np.uint32)) & 1 == 1]


def _bits(token_ids: np.ndarray, num_words: int) -> np.ndarray:
    bits = np.zeros(num_words * 32, dtype=np.uint8)
    bits[token_ids] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def _only(row: torch.Tensor, token_ids: np.ndarray) -> None:
    """Narrow the bitmask ``row`` to exactly ``token_ids``."""
    row.copy_(torch.from_numpy(_bits(token_ids, row.numel())))


def _forbid(row: torch.Tensor, token_ids: np.ndarray) -> bool:
    """Take ``token_ids`` out of the bitmask ``row``, unless nothing would be left; whether any went."""
    before = row.numpy()
    kept = before & ~_bits(token_ids, row.numel())
    if not kept.any() or np.array_equal(kept, before):
        return False
    row.copy_(torch.from_numpy(kept))
    return True


class BudgetClosingMatcher:
    """A JSON grammar's matcher that closes its document when the output tokens left run short (see the module
    docstring). Tracks one ``JsonScan`` per accepted token, so rollback (speculative drafts) stays exact.

    How many tokens closing takes is found by playing the closing rules forward on the matcher itself (taking the
    lowest allowed id where the rules leave a choice, an over-estimate) and rolling back. That costs a mask fill per
    token played, so it runs only once the tokens left are within ``PLAY_WINDOW`` of the brackets still open."""

    def __init__(self, matcher: GrammarMatcher, vocabulary: ClosingVocabulary):
        self._matcher = matcher
        self._vocabulary = vocabulary
        self._scans = [JsonScan()]
        # per accepted token: whether its row was narrowed to close the document, and whether it or a token
        # before it was chosen under a row the budget narrowed (closing or guarded)
        self._closing = [False]
        self._steered = [False]
        # per position: (closing, steered) of the row last filled there (drafts fill rows ahead, then roll back)
        self._row_state: dict[int, tuple[bool, bool]] = {}
        self._slack: dict[int, int] = {}  # per position: tokens left there beyond what closing takes
        self._largest_jump = FIRST_GUESS_JUMP  # the most slack one token has cost so far

    @property
    def closed_by_budget(self) -> bool:
        """Whether the budget steered the output so far (closing it, or keeping it from growing)."""
        return self._steered[-1]

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, tokens_left: int | None = None) -> None:
        position = len(self._scans) - 1
        closing, guarded = self._closing[-1], False
        if not closing and tokens_left is not None:
            slack = self._slack[position] = tokens_left - self._tokens_to_close(tokens_left)
            if position - 1 in self._slack:
                self._largest_jump = max(self._largest_jump, self._slack[position - 1] - slack)
            closing, guarded = slack <= CLOSING_MARGIN, slack <= CLOSING_MARGIN + self._largest_jump
        self._matcher.fill_bitmask(bitmask, row)
        scan, steered = self._scans[-1], closing
        if closing:
            narrowed = self._narrowed(bitmask[row], scan)
            if narrowed is not None:
                _only(bitmask[row], narrowed)
        elif guarded and not scan.escaped:
            steered = _forbid(bitmask[row], self._vocabulary.expanding_ids[scan.in_string])
        self._row_state[position] = (closing, steered)

    def _tokens_to_close(self, tokens_left: int) -> int:
        """The tokens the closing rules take from here (at most ``tokens_left``); the brackets open where the
        budget is far from them."""
        scan = self._scans[-1]
        if tokens_left > scan.num_open + PLAY_WINDOW:
            return scan.num_open
        scratch = torch.empty(1, self._vocabulary.num_words, dtype=torch.int32)
        accepted = 0
        while accepted < tokens_left and not self._matcher.is_terminated():
            self._matcher.fill_bitmask(scratch, 0)
            narrowed = self._narrowed(scratch[0], scan)
            if narrowed is None:
                narrowed = np.flatnonzero(np.unpackbits(scratch[0].numpy().view(np.uint8), bitorder="little"))
            token_id = int(narrowed[0])
            if token_id in self._vocabulary.eos_token_ids:
                self._matcher.rollback(accepted)
                return accepted + 1
            if not self._matcher.accept(token_id):
                break
            scan = scan.after(self._vocabulary.token_bytes[token_id])
            accepted += 1
        self._matcher.rollback(accepted)
        return accepted

    def _narrowed(self, row: torch.Tensor, scan: JsonScan) -> np.ndarray | None:
        """The tokens of the fastest way to close from ``scan``, among those ``row`` allows; None where the rules
        leave the choice to the grammar (a required key or a colon comes first)."""
        vocabulary = self._vocabulary
        eos = allowed_among(row, vocabulary.eos_token_ids)
        if eos.size:  # the document is whole
            return eos
        closers = allowed_among(row, vocabulary.closer_ids)
        if closers.size:
            open_after = np.array([scan.after(vocabulary.token_bytes[i]).num_open for i in closers])
            if open_after.min() < scan.num_open:
                return closers[open_after == open_after.min()]
        if scan.in_string:  # the grammar decides what a string still needs (a pattern, a format, a length)
            return None
        for tier in (vocabulary.comma_ids, vocabulary.value_ids):
            allowed = allowed_among(row, tier)
            if allowed.size:
                return allowed
        return None

    def accept(self, token_id: int) -> bool:
        if not self._matcher.accept(token_id):
            return False
        closing, steered = self._row_state.get(len(self._scans) - 1, (self._closing[-1], False))
        self._closing.append(closing)
        self._steered.append(steered or self._steered[-1])
        self._scans.append(self._scans[-1].after(self._vocabulary.token_bytes[token_id]))
        return True

    def num_valid(self, token_ids: list[int]) -> int:
        return self._matcher.num_valid(token_ids)

    def rollback(self, num_tokens: int) -> None:
        self._matcher.rollback(num_tokens)
        if num_tokens:
            del self._scans[-num_tokens:]
            del self._closing[-num_tokens:]
            del self._steered[-num_tokens:]

    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()
