"""The README's configuration table is the one generated from Settings."""

from __future__ import annotations

from pathlib import Path

from millibatch.settings_doc import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    begin, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    current = text[text.index(begin) + len(begin) : text.index(end)]
    assert current == settings_table(), "run: python -m millibatch.settings_doc --write README.md"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make serve" in text and "make test" in text
