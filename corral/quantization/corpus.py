"""Calibration and evaluation text that every machine has: docstrings of the Python standard library.

Files are split into train and held-out by a stable hash of their name, so calibration never sees the
text that perplexity is measured on.
"""

from __future__ import annotations

import ast
import sysconfig
import zlib
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout"]

# A fixed, sorted set of pure-Python modules present in every CPython 3.10+ install.
_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "collections/__init__", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email/message", "enum", "fractions",
    "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html/parser", "http/client",
    "imaplib", "inspect", "ipaddress", "json/decoder", "json/encoder", "logging/__init__", "mailbox",
    "mimetypes", "netrc", "ntpath", "numbers", "optparse", "pathlib", "pickle", "pprint", "queue", "random",
    "shlex", "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest/case", "urllib/parse",
    "uuid", "warnings", "wave", "weakref", "zipfile",
)


def _split_of(module: str) -> Split:
    return "heldout" if zlib.crc32(module.encode()) % 5 == 0 else "train"


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


def stdlib_docstrings(split: Split) -> str:
    """All docstrings of the split's modules, in a fixed order, separated by blank lines."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for module in _MODULES:
        path = stdlib / f"{module}.py"
        if _split_of(module) == split and path.is_file():
            texts.extend(_docstrings(path))
    return "\n\n".join(texts)
