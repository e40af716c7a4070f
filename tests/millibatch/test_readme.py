"""docs/CONFIGURATION.md's settings table is the one generated from Settings."""

from __future__ import annotations

from pathlib import Path

from millibatch.settings_doc import BEGIN, END, settings_table

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "CONFIGURATION.md"


def test_configuration_settings_table_is_current() -> None:
    text = CONFIGURATION.read_text()
    current = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert current == settings_table(), "run: python -m millibatch.settings_doc --write docs/CONFIGURATION.md"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make serve" in text and "make test" in text
