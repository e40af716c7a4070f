"""Token classification (NER): per-token label probabilities → entities with character offsets.

Follows Hugging Face transformers' `TokenClassificationPipeline` and its `aggregation_strategy`, so a
model served here finds the entities it finds in Python:

- none: one entity per token, labelled as the model labels it (B-PER, I-PER, O, ...);
- simple: adjacent tokens of one type merge into one entity, labelled by type (PER); a B- tag starts
  a new entity, as does a change of type; the score is the mean of the tokens' scores;
- first / average / max: as simple, after each word's pieces got one label: the first piece's, the
  best of the pieces' mean probabilities, or the most confident piece's.

Words are the tokenizer's own (its pre-tokenized words, `Encoding.word_ids`). transformers guesses them
from token lengths instead (a piece whose token and text differ in length, like "##kel" and "kel",
continues the word before); both agree except where normalisation changes a piece's length, e.g. a
decomposed accent inside a word ("Rene\u0301e"), which transformers glues to the previous word.
Pure numpy: no protobuf, no tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

Strategy = Literal["none", "simple", "first", "average", "max"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
#: What transformers leaves out unless told otherwise.
DEFAULT_IGNORE_LABELS = ("O",)


@dataclass(frozen=True, slots=True)
class Entity:
    """An entity found in a text (or a token, for the "none" strategy)."""

    #: Entity type without its B-/I- prefix ("PER"); the token's own label ("B-PER") for "none".
    label: str
    #: Probability of the label: the token's, or the mean over the entity's tokens (or words).
    score: float
    #: Character offsets [start, end) into the text.
    start: int
    end: int
    #: text[start:end], the entity exactly as written.
    text: str


@dataclass(frozen=True, slots=True)
class _Span:
    """A token or word with one label, before grouping."""

    label: int
    score: float
    start: int
    end: int


def _tag(label: str) -> tuple[bool, str]:
    """(begins an entity, type) in transformers' reading: B-X begins X, I-X continues X, and a label
    without a prefix continues its own type."""
    if label.startswith("B-"):
        return True, label[2:]
    if label.startswith("I-"):
        return False, label[2:]
    return False, label


def _word_starts(tokens: npt.NDArray[np.intp], word_ids: Sequence[int | None]) -> npt.NDArray[np.intp]:
    """Positions in `tokens` where a word begins: its word id differs from the previous token's (a
    token without a word id is a word of its own)."""
    ids = [word_ids[t] for t in tokens.tolist()]
    return np.array(
        [i for i, word in enumerate(ids) if i == 0 or word is None or word != ids[i - 1]], dtype=np.intp
    )


def _word_labels(
    scores: npt.NDArray[np.floating], starts: npt.NDArray[np.intp], strategy: Strategy
) -> npt.NDArray[np.floating]:
    """One probability row per word from its pieces' rows (`scores` [pieces, labels], words beginning
    at `starts`), vectorised: numpy calls per word made a 512-token text several times slower."""
    if strategy == "first":
        return scores[starts]
    if strategy == "max":
        # The most confident piece; the first of equals, as transformers' max() picks.
        confidence = scores.max(axis=1)
        best = np.maximum.reduceat(confidence, starts)
        position = np.arange(len(scores))
        word = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(scores))))
        candidates = np.where(confidence == best[word], position, len(scores))
        return scores[np.minimum.reduceat(candidates, starts)]
    # average: nanmean over each word's pieces.
    valid = ~np.isnan(scores)
    sums = np.add.reduceat(np.where(valid, scores, 0.0), starts, axis=0)
    counts = np.add.reduceat(valid, starts, axis=0).astype(scores.dtype)  # divide in the scores' precision
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _group(spans: list[_Span], tags: list[tuple[bool, str]]) -> list[list[_Span]]:
    """Adjacent spans of one type, a B- tag starting a new group (transformers' group_entities)."""
    groups: list[list[_Span]] = []
    for span in spans:
        begins, kind = tags[span.label]
        if groups and not begins and kind == tags[groups[-1][-1].label][1]:
            groups[-1].append(span)
        else:
            groups.append([span])
    return groups


def _mean(values: list[float]) -> float:
    """nanmean of a few floats without numpy's per-call overhead."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def extract_entities(
    text: str,
    probabilities: npt.NDArray[np.floating],
    labels: Sequence[str],
    *,
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    special_tokens_mask: Sequence[int],
    strategy: Strategy = "simple",
    ignore_labels: Sequence[str] = DEFAULT_IGNORE_LABELS,
) -> list[Entity]:
    """Entities in `text` from its tokens' label `probabilities` [tokens, labels] and the tokenizer's
    offsets, word ids and special-token mask for the same tokens. Special tokens are skipped."""
    probabilities = np.asarray(probabilities)
    count = len(offsets)
    if probabilities.shape != (count, len(labels)) or len(word_ids) != count or len(special_tokens_mask) != count:
        raise ValueError(
            f"probabilities {probabilities.shape} do not match {count} tokens x {len(labels)} labels "
            f"({len(word_ids)} word ids, {len(special_tokens_mask)} special-token flags)"
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    tokens = np.flatnonzero(np.asarray(special_tokens_mask) == 0)
    if not len(tokens):
        return []
    scores = probabilities[tokens]
    spans_at = [offsets[t] for t in tokens.tolist()]
    if strategy in ("none", "simple"):
        rows = scores
        bounds = spans_at
    else:
        starts = _word_starts(tokens, word_ids)
        rows = _word_labels(scores, starts, strategy)
        ends = [*(starts[1:] - 1).tolist(), len(tokens) - 1]
        bounds = [(spans_at[a][0], spans_at[b][1]) for a, b in zip(starts.tolist(), ends, strict=True)]
    best = rows.argmax(axis=1)
    top = rows[np.arange(len(rows)), best]
    spans = [_Span(label, score, start, end)
             for label, score, (start, end) in zip(best.tolist(), top.tolist(), bounds, strict=True)]
    ignored = set(ignore_labels)
    if strategy == "none":
        found = [Entity(labels[s.label], s.score, s.start, s.end, text[s.start : s.end]) for s in spans]
        return [e for e in found if e.label not in ignored]
    entities = []
    for group in _group(spans, [_tag(label) for label in labels]):
        # The type comes from the group's first label, as in transformers ("B-PER" → "PER").
        kind = labels[group[0].label].split("-", 1)[-1]
        if kind in ignored:
            continue
        start, end = group[0].start, group[-1].end
        entities.append(Entity(kind, _mean([s.score for s in group]), start, end, text[start:end]))
    return entities
