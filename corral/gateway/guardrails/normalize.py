"""Light normalisation of text before the injection rules read it, so that one rule covers the common
disguises: letter case, accents, full-width and other compatibility forms (NFKC), Cyrillic and Greek letters
that look Latin, zero-width characters, leetspeak inside words (``1gn0r3``), punctuation between letters
(``ig-nore``, ``i.g.n.o.r.e``) and spaced-out letters (``i g n o r e``).

``normalize`` gives lowercase words separated by single spaces (the form rule patterns are written for), in
two readings: punctuation as a space (``ignore-all-previous`` is three words) and punctuation inside a word
dropped (``ig-nore`` is one); a rule matches if either does. ``fold`` keeps punctuation and line breaks (for
rules on markup such as ``<|im_start|>``).
"""

from __future__ import annotations

import re
import unicodedata

import regex

# Letters that render like Latin ones (Unicode's confusables, the Cyrillic and Greek lowercase subset).
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "ɡ": "g", "ı": "i", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
})
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u206f\ufeff]")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                       "!": "i", "|": "l"})
# A token that mixes letters and leet digits or symbols (plain words and numbers never reach the callback).
_LEET_WORD = re.compile(r"(?<![a-z0-9@$!|])(?:[a-z]+[0-9@$!|]|[0-9@$!|]+[a-z])[a-z0-9@$!|]*")
_COMBINING = regex.compile(r"\p{M}+")
_HYPHENATED = regex.compile(r"(?<=[a-z])[-.·_*](?=[a-z])")
# Everything but ASCII letters and digits becomes a space (non-ASCII left by `fold` is encoded as "?" first).
_TO_SPACE = {code: " " for code in range(128) if not chr(code).isalnum()}
# Four or more single letters in a row, spaced out: "i g n o r e".
# The regex module scans these lookaround-led patterns 10x faster than re; re is faster on _LEET_WORD.
_SPACED_LETTERS = regex.compile(r"(?<![a-z0-9])(?:[a-z] ){3,}[a-z](?![a-z0-9])")


def fold(text: str) -> str:
    """NFKC, accents stripped, confusables mapped, invisible characters removed, case folded."""
    if text.isascii():  # the common case, and none of the steps below changes ASCII but the case
        return text.casefold()
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    text = _COMBINING.sub("", unicodedata.normalize("NFKD", text.casefold()))  # accents, as separate marks
    return text.translate(_CONFUSABLES)


def normalize(text: str) -> tuple[str, str]:
    """``fold``, then leetspeak undone inside words (a plain number is left alone), everything that is not a
    letter or digit turned into one space, and spaced-out letters joined; returned twice: with punctuation
    between letters read as a space, and dropped (the same string when there is none)."""
    text = _LEET_WORD.sub(_unleet, fold(text))
    spaced = _words(text)
    return spaced, (_words(_HYPHENATED.sub("", text)) if _HYPHENATED.search(text) else spaced)


def _unleet(token: re.Match) -> str:
    # "instructions!" ends with punctuation, not with a leet letter: only what lies between letters is mapped.
    word = token[0]
    core = word.rstrip("@$!|")
    return core.translate(_LEET) + word[len(core):]


def _words(text: str) -> str:
    # Spaced-out letters are joined before whitespace is collapsed: a wider gap is where their words end.
    text = _SPACED_LETTERS.sub(lambda run: run[0].replace(" ", ""), text)
    return " ".join(text.encode("ascii", "replace").decode("ascii").translate(_TO_SPACE).split())
