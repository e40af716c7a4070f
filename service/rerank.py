"""Reranking: a cross-encoder (a `classify` model) scores each (query, document) pair through the
batcher, and the documents come back best first.

The score rule, the same on every door:
- a model with one output (the usual cross-encoder, e.g. ms-marco-MiniLM) scores a pair with
  sigmoid(logit), in (0, 1) like Cohere's `relevance_score`, as sentence-transformers' CrossEncoder does
  by default; documents are ordered by the logit itself, so the order stays exact where float32's
  sigmoid rounds to 1.0;
- a model with several labels scores a pair with the softmax probability of its last label (the
  positive one of a [not relevant, relevant] classifier) and is ordered by it.
Ties keep the documents' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from millibatch.errors import InvalidInput
from millibatch.service.dataplane import Computed, DataPlane
from millibatch.service.registry import ServedModel
from millibatch.service.tokenization import Direction


@dataclass(frozen=True, slots=True)
class Ranked:
    """One document's place: its index in the request and its relevance score."""

    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Reranked:
    """The ranked documents, best first (at most top_n), and what the plane reports."""

    ranked: list[Ranked]
    done: Computed


def check_documents(plane: DataPlane, model: ServedModel, query: str, documents: Sequence[str]) -> None:
    """Refuse an empty query or document, too many documents, or an over-long text, naming the field."""
    limit, max_chars = plane.settings.max_inputs_per_request, model.encoder.max_chars
    if not query:
        raise InvalidInput("query is empty")
    if len(query) > max_chars:
        raise InvalidInput(f"query has {len(query)} characters; the limit is {max_chars}")
    if not documents or len(documents) > limit:
        raise InvalidInput(f"{len(documents)} documents in one request; send between 1 and {limit}")
    for index, document in enumerate(documents):
        if not document:
            raise InvalidInput(f"documents[{index}] is empty")
        if len(document) > max_chars:
            raise InvalidInput(f"documents[{index}] has {len(document)} characters; the limit is {max_chars}")


async def rerank(plane: DataPlane, model: ServedModel, query: str, documents: Sequence[str], *, top_n: int = 0,
                 truncate: bool = False, direction: Direction = "right", deadline: float) -> Reranked:
    """Score every (query, document) pair as one request and rank the documents; `top_n` 0 keeps all."""
    check_documents(plane, model, query, documents)
    if top_n < 0:
        raise InvalidInput(f"top_n is {top_n}; it must be 0 (all) or more")
    done = await plane.compute_texts(model, [query] * len(documents), documents, truncate=truncate,
                                     deadline=deadline, direction=direction)
    keys, scores = relevance(done)
    order = np.argsort(-keys, kind="stable")[: top_n or len(documents)]
    # float32, what gRPC carries: every door reports the same numbers.
    scores32 = scores.astype(np.float32)
    return Reranked([Ranked(int(i), float(scores32[i])) for i in order], done)


def relevance(done: Computed) -> tuple[np.ndarray, np.ndarray]:
    """(sort keys, scores) of the pairs, per the module's rule."""
    logits = np.stack([r.get("logits") for r in done.results]).astype(np.float64)
    if logits.shape[1] == 1:
        keys = logits[:, 0]
        # sigmoid, written with tanh so that large |logit| neither overflows nor warns.
        return keys, 0.5 * (1.0 + np.tanh(keys / 2.0))
    probabilities = np.stack([r.get("probabilities")[-1] for r in done.results]).astype(np.float64)
    return probabilities, probabilities
