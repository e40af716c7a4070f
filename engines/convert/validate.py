"""Prove a converted model still gives PyTorch's answers: per-row agreement and, for embedding
models, the STS Benchmark score."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from millibatch.engines.base import EngineInputs, FloatArray

#: Used when the STS-B file is not around: short, long, punctuated and non-ASCII text.
FALLBACK_SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates again.",
    "¿Dónde está la biblioteca? Está cerca del parque.",
    "Transformers encode text into vectors; similar meanings land close together.",
    "ok",
    "Numbers like 3.14159 and dates like 2026-11-22 are tokenized into several pieces each.",
    "She said, \"I'll be there by noon,\" but arrived at half past two.",
]


def default_stsb_path() -> Path | None:
    """$MILLIBATCH_STSB, else ../shared/data/stsb-test.tsv beside the repository, if present."""
    env = os.environ.get("MILLIBATCH_STSB")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "stsb-test.tsv")
    return next((p for p in candidates if p.is_file()), None)


@dataclass(frozen=True)
class StsPair:
    """One STS-B pair with its gold similarity (0-5)."""

    first: str
    second: str
    score: float


def load_stsb(path: Path) -> list[StsPair]:
    """Read the STS-B test TSV: tab-separated, score in column 5, sentences in 6 and 7."""
    pairs = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append(StsPair(first=row[5], second=row[6], score=float(row[4])))
    return pairs


def sample_sentences(count: int, stsb: Path | None = None) -> list[str]:
    """`count` real sentences: spread over STS-B if available, else the fallback list."""
    path = stsb or default_stsb_path()
    if path is None:
        return FALLBACK_SENTENCES[:count]
    pairs = load_stsb(path)
    step = max(1, len(pairs) // max(1, count))
    sentences = [p.first for p in pairs[::step]][: count - 2]
    # Two long inputs made of joined sentences so the check also covers long sequences.
    sentences.append(" ".join(p.second for p in pairs[:12]))
    sentences.append(" ".join(p.first for p in pairs[-12:]))
    return sentences


def encode_padded(tokenizer: Any, texts: Sequence[str], max_length: int) -> EngineInputs:
    """Tokenize and pad `texts` the way the server does (truncating to max_length)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    return EngineInputs(input_ids=ids, attention_mask=mask, token_type_ids=types)


def cosine_rows(a: FloatArray, b: FloatArray) -> FloatArray:
    """Cosine similarity of matching rows of a and b."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


def agreement(reference: FloatArray, candidate: FloatArray) -> dict[str, float]:
    """max_abs_diff, min_cosine and mean_cosine between two [rows, dim] outputs."""
    cos = cosine_rows(reference, candidate)
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
    }


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(values: Sequence[float]) -> FloatArray:
        array = np.asarray(values, dtype=np.float64)
        order = array.argsort(kind="mergesort")
        ranked = np.empty_like(array)
        sorted_values = array[order]
        i = 0
        while i < len(array):
            j = i
            while j + 1 < len(array) and sorted_values[j + 1] == sorted_values[i]:
                j += 1
            ranked[order[i : j + 1]] = (i + j) / 2.0
            i = j + 1
        return ranked.astype(np.float32)

    rx, ry = ranks(x).astype(np.float64), ranks(y).astype(np.float64)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else 0.0


def stsb_score(embed: Callable[[list[str]], FloatArray], pairs: Sequence[StsPair], chunk: int = 64) -> float:
    """STS-B Spearman x 100 of cosine similarities from `embed` (a batch of texts → vectors)."""
    sims: list[float] = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        first = embed([p.first for p in part])
        second = embed([p.second for p in part])
        sims.extend(cosine_rows(first, second).tolist())
    return 100.0 * spearman(sims, [p.score for p in pairs])
