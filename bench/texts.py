"""Benchmark inputs: STS-B test sentences, and longer texts made by joining consecutive sentences."""

from __future__ import annotations

from pathlib import Path

from millibatch.engines.convert.validate import load_stsb

# The STS-B test set sits in the shared folder beside a checkout (../shared/data/stsb-test.tsv).
DEFAULT_STSB = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "stsb-test.tsv"

# Sentences per long text: 10 STS-B sentences are 74-255 word pieces (5th-95th percentile, median 100);
# the few past MiniLM's 256 (14 of 275, up to 303) are truncated by every peer but infinity-onnx, whose engine
# truncates at the model's 512 positions.
LONG_JOIN = 10

TEXT_SETS = ("sts", "long")


def stsb_sentences(path: Path) -> list[str]:
    """Both sentences of every STS-B row, in file order."""
    sentences = [s.strip() for pair in load_stsb(path) for s in (pair.first, pair.second)]
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
