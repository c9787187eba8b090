"""The docs' generated reference (every --help, the metrics list) matches the code, and every command has
its block in docs/cli.md."""

from pathlib import Path

import pytest

from corral.cli import reference

ROOT = Path(__file__).resolve().parents[2]


def test_generated_blocks_match_the_code():
    stale = reference.stale_files(reference.doc_files(ROOT))
    assert not stale, f"out of date: {[str(p.relative_to(ROOT)) for p in stale]}; run `make docs`"


def test_every_command_and_the_metrics_are_documented():
    cli_page = (ROOT / "docs" / "cli.md").read_text()
    assert reference.generated_keys(cli_page) == list(reference.help_texts())
    serving_page = (ROOT / "docs" / "serving.md").read_text()
    assert "corral serve --help" in reference.generated_keys(serving_page)
    assert reference.METRICS_KEY in reference.generated_keys(serving_page)


def test_a_changed_flag_makes_the_docs_stale(monkeypatch):
    page = (ROOT / "docs" / "cli.md").read_text()
    original = reference.help_texts

    def with_a_renamed_flag() -> dict[str, str]:
        return {key: text.replace("--max-num-seqs", "--max-sequences") for key, text in original().items()}

    monkeypatch.setattr(reference, "help_texts", with_a_renamed_flag)
    assert reference.refresh(page) != page
    assert "--max-sequences" in reference.refresh(page)


def test_unknown_block_names_are_errors():
    with pytest.raises(KeyError, match="no generated block"):
        reference.refresh("<!-- BEGIN GENERATED: corral frobnicate --help -->\n<!-- END GENERATED -->\n")
