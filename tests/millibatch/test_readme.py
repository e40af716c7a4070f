"""The README is a short front door; docs/CONFIGURATION.md's table is the one generated from Settings;
every relative link in README.md and docs/*.md leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from millibatch.settings_doc import BEGIN, END, settings_table

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "CONFIGURATION.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_configuration_settings_table_is_current() -> None:
    text = CONFIGURATION.read_text()
    current = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert current == settings_table(), "run: python -m millibatch.settings_doc --write docs/CONFIGURATION.md"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make serve" in text and "make test" in text


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_marks_the_headline_benchmark_once() -> None:
    text = README.read_text()
    assert text.count("<!-- headline-benchmark -->") == 1 and text.count("<!-- /headline-benchmark -->") == 1
    assert text.index("<!-- headline-benchmark -->") < text.index("<!-- /headline-benchmark -->")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors: set[str] = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _relative_links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists() or (
            anchor and destination.suffix == ".md" and anchor not in _anchors(destination)
        ):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"
