"""Benchmark inputs: STS-B test sentences, and longer texts made by joining consecutive sentences."""

from __future__ import annotations

import csv
from pathlib import Path

# The STS-B test set sits in the shared folder beside a checkout (../shared/data/stsb-test.tsv).
DEFAULT_STSB = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "stsb-test.tsv"

# Sentences per long text: 10 STS-B sentences are 74-255 word pieces (5th-95th percentile, median 100);
# the few past MiniLM's 256 are truncated by every peer.
LONG_JOIN = 10

TEXT_SETS = ("sts", "long")


def stsb_sentences(path: Path) -> list[str]:
    """Both sentences of every STS-B row (columns 6 and 7), in file order."""
    sentences: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                sentences += [row[5].strip(), row[6].strip()]
    if not sentences:
        raise ValueError(f"no STS-B sentences in {path}")
    return sentences


def text_set(name: str, sentences: list[str]) -> list[str]:
    """The texts of one named set: 'sts' (single sentences) or 'long' (LONG_JOIN sentences joined)."""
    if name == "sts":
        return list(sentences)
    if name == "long":
        return [" ".join(sentences[i:i + LONG_JOIN]) for i in range(0, len(sentences) - LONG_JOIN + 1, LONG_JOIN)]
    raise ValueError(f"unknown text set {name!r}; choose from {TEXT_SETS}")
