"""The grammar-backend protocol: what the engine needs from a library that constrains decoding to a grammar.

A backend compiles a ``StructuredOutputsParams`` once into a grammar (slow: milliseconds to seconds, done off the
engine's step path and cached, see ``cache.py``); each request then walks its own cheap matcher over it. Per
step the engine asks every constrained request's matcher for the tokens allowed next (a bitmask row), samples
under that mask, and feeds the chosen token back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from corral.sample.params import StructuredOutputsParams

if TYPE_CHECKING:
    import torch


class GrammarMatcher(Protocol):
    """One request's position in its grammar. Invariant: after ``accept`` of every token the mask allowed, the
    matcher is never stuck: some token (EOS once the grammar is complete) stays allowed."""

    closed_by_budget: bool  # the output ended by closing its document early, for ``tokens_left`` (json_closer.py)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, tokens_left: int | None = None) -> None:
        """Write the tokens allowed next into row ``row`` of ``bitmask`` ([rows, ceil(vocab / 32)] int32).
        ``tokens_left``: output tokens the request may still produce, this row's included; a matcher that knows how
        to end its document early may narrow the row to that once the budget runs short."""

    def accept(self, token_id: int) -> bool:
        """Advance past ``token_id``; False (and no move) if the grammar does not allow it here."""

    def num_valid(self, token_ids: list[int]) -> int:
        """How many of ``token_ids``, from the first, the grammar would accept in a row from here (no move)."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens."""

    def is_terminated(self) -> bool:
        """Whether nothing more may follow: the grammar has ended (EOS accepted, or nothing but EOS is left), or the
        matcher is in an error state."""


class CompiledGrammar(Protocol):
    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the grammar's start."""


class GrammarBackend(Protocol):
    """A grammar library bound to one tokenizer. ``compile`` may run on any thread, concurrently with matchers
    in use on another."""

    name: str
    vocab_size: int  # tokens the bitmask covers

    def compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        """The grammar for ``spec``; raises ``GrammarError`` (a 400 for the server) if it is invalid or unsupported."""
