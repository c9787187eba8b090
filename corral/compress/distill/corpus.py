"""Local training text: what every machine with Python (and Debian's packages) already holds, plus the user's.

Sources, read in a fixed order and interleaved one document at a time so a small budget still samples each:
the user's files and directories, the standard library's train-split docstrings, the standard library's source
files, the man pages, and the READMEs and text documents under /usr/share/doc. Held-out text is the held-out
split of the standard library's docstrings (the text ``corral eval`` scores), and the source of its modules is
left out of training, since that source contains those docstrings.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.compress.distill.config import DistillError
from corral.quantization.corpus import _MODULES, _split_of, stdlib_docstrings

SYSTEM_SOURCES = ("stdlib-docstrings", "stdlib-source", "man", "doc")
_MAN_ROOT = Path("/usr/share/man")
_DOC_ROOT = Path("/usr/share/doc")
_DOC_NAME = re.compile(r"(readme|\.txt|\.md|\.rst)(\.gz)?$", re.IGNORECASE)
_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".gz", "")
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "site-packages", "dist-packages"})
_MAX_DOCUMENT_CHARS = 200_000
_DOCSTRING_CHUNK_CHARS = 16_000  # the docstrings are one text: served in pieces so other sources interleave  # a huge file would otherwise fill the whole budget by itself
# man(7) and mdoc(7) macros whose arguments are text (headings, fonts, list items); other requests are layout
_TEXT_MACROS = frozenset({"SH", "SS", "B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "IP", "Nm", "Nd",
                          "Sh", "Ss", "Fl", "Ar", "Op", "It", "Xr", "Dq", "Pa"})
# roff: font and size escapes (\fB, \s-1, \(em ...) and request lines (.TH, .SH, ...)
_ROFF_ESCAPE = re.compile(r"\\(f[BIRP]|f\(..|s[+-]?\d|\(..|&)")


@dataclass(frozen=True)
class Document:
    source: str  # one of SYSTEM_SOURCES, or "user"
    name: str
    text: str


def gather_documents(user_paths: Iterable[str], sources: Iterable[str], max_chars: int) -> list[Document]:
    """Up to ``max_chars`` characters of documents: the user's paths (files, or directories read
    recursively) and the named ``sources``, interleaved round-robin so each contributes early."""
    unknown = set(sources) - set(SYSTEM_SOURCES)
    if unknown:
        raise DistillError(f"unknown text source(s) {sorted(unknown)}; choose from {', '.join(SYSTEM_SOURCES)}")
    for path in user_paths:
        if not os.path.exists(path):
            raise DistillError(f"--data {path}: no such file or directory")
    readers: list[Iterator[Document]] = [_user_documents(user_paths)] if user_paths else []
    readers += [_SOURCE_READERS[name]() for name in SYSTEM_SOURCES if name in set(sources)]
    documents, total = [], 0
    while readers and total < max_chars:
        for reader in list(readers):
            document = next(reader, None)
            if document is None:
                readers.remove(reader)
            elif document.text.strip():
                documents.append(document)
                total += len(document.text)
    return documents


@functools.lru_cache(maxsize=1)
def heldout_text() -> str:
    return stdlib_docstrings("heldout")


def read_text_file(path: str) -> str:
    text = _read_text(Path(path))
    if text is None:
        raise DistillError(f"{path} is not UTF-8 text")
    return text


def _user_documents(paths: Iterable[str]) -> Iterator[Document]:
    for path in paths:
        files = [Path(path)] if os.path.isfile(path) else sorted(p for p in Path(path).rglob("*") if p.is_file())
        for file in files:
            if file.suffix.lower() in _TEXT_SUFFIXES and (text := _read_text(file)) is not None:
                yield Document("user", str(file), text)


def _stdlib_docstrings() -> Iterator[Document]:
    chunk: list[str] = []
    for docstring in stdlib_docstrings("train").split("\n\n"):
        chunk.append(docstring)
        if sum(map(len, chunk)) >= _DOCSTRING_CHUNK_CHARS:
            yield Document("stdlib-docstrings", "train split", "\n\n".join(chunk))
            chunk = []
    if chunk:
        yield Document("stdlib-docstrings", "train split", "\n\n".join(chunk))


def _stdlib_source() -> Iterator[Document]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    heldout = {stdlib / f"{module}.py" for module in _MODULES if _split_of(module) == "heldout"}
    for file in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if file in heldout or file.parent.name in _SKIPPED_STDLIB_DIRS:
            continue
        if (text := _read_text(file)) is not None:
            yield Document("stdlib-source", file.name, text)


def _man_pages() -> Iterator[Document]:
    for file in sorted(_MAN_ROOT.glob("man[1-8]/*")):
        if (roff := _read_text(file)) is not None and not roff.startswith(".so "):  # .so: an alias page
            yield Document("man", file.name, _roff_to_text(roff))


def _doc_files() -> Iterator[Document]:
    for file in sorted(_DOC_ROOT.glob("*/*")):
        if _DOC_NAME.search(file.name) and file.is_file() and (text := _read_text(file)) is not None:
            yield Document("doc", f"{file.parent.name}/{file.name}", text)


_SOURCE_READERS = {"stdlib-docstrings": _stdlib_docstrings, "stdlib-source": _stdlib_source,
                   "man": _man_pages, "doc": _doc_files}


def _read_text(file: Path) -> str | None:
    """The file's UTF-8 text (gunzipped if ``.gz``), cut at ``_MAX_DOCUMENT_CHARS``; None if binary or unreadable."""
    try:
        raw = gzip.open(file).read() if file.suffix == ".gz" else file.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None
    return None if "\x00" in text else text[:_MAX_DOCUMENT_CHARS]


def _roff_to_text(roff: str) -> str:
    """Plain text of a man page's roff source: macro definitions and layout requests dropped, the arguments
    of text macros kept, escapes removed."""
    lines, in_macro_definition = [], False
    for line in roff.splitlines():
        if in_macro_definition or line.startswith((".de ", ".de\t")):
            in_macro_definition = line.strip() != ".."
            continue
        if line.startswith((".", "'")):
            request, _, line = line[1:].partition(" ")
            if request not in _TEXT_MACROS:
                continue
        lines.append(_ROFF_ESCAPE.sub("", line).replace("\\-", "-").replace("\\", ""))
    return "\n".join(line for line in lines if line.strip())
