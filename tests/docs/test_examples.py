"""Every ```python and ```bash block in README.md and docs/*.md runs, against the default model, and must
exit 0: an example that stops working fails the suite.

A block is marked by the HTML comment on the line just above its fence:
- none: run it as it is;
- ``<!-- example: server -->``: run it against a ``corral serve`` started here on a free port (the block
  says ``127.0.0.1:8000``, which is rewritten to that port);
- ``<!-- example: skip: REASON -->``: not run, and the reason is required (a long quantization, a server
  that runs until stopped).
``.venv/bin/`` in a block is rewritten to the directory of the Python running the tests.
Other fences (```text, ```json) are output samples and are not run."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
_MARKER = re.compile(r"<!-- example: (?P<mode>run|server|skip)(?:: (?P<reason>.+?))? -->$")
_ANY_MARKER = re.compile(r"<!-- example\b")
DOC_PORT = "127.0.0.1:8000"
TIMEOUT_S = 300


class ExampleSyntaxError(ValueError):
    """A marker that does not parse, or a fence that never closes."""


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # "python" or "bash"
    code: str
    mode: str  # "run", "server" or "skip"
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_examples(path: Path) -> list[Example]:
    lines = path.read_text().splitlines()
    examples: list[Example] = []
    marker: tuple[str, str | None] | None = None
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if _ANY_MARKER.match(line):
            match = _MARKER.match(line)
            if match is None or (match["mode"] == "skip") != bool(match["reason"]):
                raise ExampleSyntaxError(f"{path}:{index + 1}: bad example marker {line!r} "
                                         "(run, server, or 'skip: REASON')")
            marker = (match["mode"], match["reason"])
            index += 1
            continue
        if line.startswith("```"):
            language = line[3:].strip().lower()
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ExampleSyntaxError(f"{path}:{index + 1}: fence never closed")
            if language in RUNNABLE:
                mode, reason = marker or ("run", None)
                code = "\n".join(lines[index + 1:end]) + "\n"
                examples.append(Example(path, index + 1, RUNNABLE[language], code, mode, reason))
            elif marker is not None:
                raise ExampleSyntaxError(f"{path}:{index + 1}: example marker above a ```{language} block")
            marker = None
            index = end + 1
            continue
        if line and marker is not None:
            raise ExampleSyntaxError(f"{path}:{index + 1}: example marker not directly above a code block")
        index += 1
    return examples


ALL_EXAMPLES = [example for path in DOC_FILES for example in parse_examples(path)]


def _prepare(code: str, port: int | None) -> str:
    code = code.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
    if port is not None:
        code = code.replace(DOC_PORT, f"127.0.0.1:{port}")
    return code


def run_example(example: Example, port: int | None = None) -> subprocess.CompletedProcess:
    code = _prepare(example.code, port)
    command = [sys.executable, "-c", code] if example.language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_every_doc_has_parseable_examples_and_the_readme_runs_some():
    readme = [e for e in ALL_EXAMPLES if e.path.name == "README.md"]
    assert any(e.mode == "run" for e in readme) and any(e.mode == "server" for e in readme)
    for example in ALL_EXAMPLES:
        if example.mode == "server":
            assert DOC_PORT in example.code, f"{example.id}: a server example must talk to {DOC_PORT}"


def test_markers_are_checked(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- example: skip -->\n```bash\ntrue\n```\n")
    with pytest.raises(ExampleSyntaxError, match="bad example marker"):
        parse_examples(doc)
    doc.write_text("<!-- example: server -->\ntext\n```bash\ntrue\n```\n")
    with pytest.raises(ExampleSyntaxError, match="not directly above"):
        parse_examples(doc)
    doc.write_text("<!-- example: skip: slow -->\n```python\nraise SystemExit(1)\n```\n```text\nout\n```\n")
    (example,) = parse_examples(doc)
    assert (example.mode, example.skip_reason, example.line) == ("skip", "slow", 2)


def _check(example: Example, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{example.id} ({example.language}) exited {result.returncode}\n--- code\n{example.code}"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    assert result.stdout.strip(), f"{example.id} printed nothing"


@pytest.mark.parametrize("example", [e for e in ALL_EXAMPLES if e.mode == "run"], ids=lambda e: e.id)
def test_example_runs(example: Example):
    _check(example, run_example(example))


@pytest.fixture(scope="module")
def docs_server_port(corral_serve_module) -> int:
    """One ``corral serve`` with its defaults (the default model, served as SmolLM2-135M-Instruct)."""
    return int(corral_serve_module().rsplit(":", 1)[1])


@pytest.mark.parametrize("example", [e for e in ALL_EXAMPLES if e.mode == "server"], ids=lambda e: e.id)
def test_server_example_runs(example: Example, docs_server_port: int):
    _check(example, run_example(example, port=docs_server_port))
