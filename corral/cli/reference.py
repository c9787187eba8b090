"""The reference parts of the docs, generated from the code: every command's ``--help`` (from the argparse
definitions) and the metrics list (from the Prometheus registry). Docs hold them between markers::

    <!-- BEGIN GENERATED: corral serve --help -->
    ...
    <!-- END GENERATED -->

``python -m corral.cli.reference`` (``make docs``) rewrites every such block; ``--check`` only reports the
stale ones, which is what the test does. Not a ``corral`` command: it is for the people who change corral."""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from corral.cli import HelpFormatter
from corral.cli.main import build_parser

HELP_WIDTH = 100  # fixed, so the generated text does not depend on the terminal that ran the generator
METRICS_KEY = "metrics"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<key>[^>]+?) -->\n)(?P<body>.*?)(<!-- END GENERATED -->)", re.DOTALL)


def _walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    parser.formatter_class = functools.partial(HelpFormatter, width=HELP_WIDTH)
    yield " ".join(words + ("--help",)), parser
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, words + (name,))


def help_texts() -> dict[str, str]:
    """``"corral serve --help"`` -> that help text, for the top-level parser and every (sub)command."""
    return {key: parser.format_help() for key, parser in _walk(build_parser(), ("corral",))}


def metrics_table() -> str:
    """A markdown table of every metric ``/metrics`` exposes, with the names a scraper sees."""
    from corral.server.metrics import EngineMetrics

    rows = ["| metric | type | meaning |", "|---|---|---|"]
    for metric in EngineMetrics().registry.collect():
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        rows.append(f"| `{name}` | {metric.type} | {metric.documentation} |")
    return "\n".join(rows) + "\n"


def render(key: str) -> str:
    if key == METRICS_KEY:
        return metrics_table()
    texts = help_texts()
    if key not in texts:
        raise KeyError(f"no generated block named {key!r} (known: {', '.join([*texts, METRICS_KEY])})")
    return f"```text\n{texts[key]}```\n"


def generated_keys(text: str) -> list[str]:
    return [match["key"] for match in _BLOCK.finditer(text)]


def refresh(text: str) -> str:
    """``text`` with every generated block rewritten from the code."""
    return _BLOCK.sub(lambda m: m.group(1) + render(m["key"]) + m.group(4), text)


def stale_files(paths: list[Path]) -> list[Path]:
    return [path for path in paths if refresh(path.read_text()) != path.read_text()]


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="regenerate the docs' reference blocks from the code")
    parser.add_argument("--check", action="store_true", help="only list stale files; exit 1 if any")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    stale = stale_files(doc_files(args.root))
    if args.check:
        for path in stale:
            print(f"{path}: generated reference out of date; run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(refresh(path.read_text()))
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
