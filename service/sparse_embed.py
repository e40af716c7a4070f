"""Sparse (SPLADE) embedding requests: a sparse-embed model's vocabulary weights per input, kept above
a threshold as (token id, weight) pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from millibatch.engines.sparse import sparsify
from millibatch.errors import InvalidInput
from millibatch.service.dataplane import Computed, DataPlane
from millibatch.service.registry import ServedModel
from millibatch.service.tokenization import Direction

#: A sparse vector: token ids (ascending) and their weights.
SparseVector = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class SparseEmbedded:
    """One sparse vector per input, in input order, and what the plane reports."""

    vectors: list[SparseVector]
    done: Computed


def check_threshold(threshold: float) -> None:
    """Refuse a threshold that is negative, NaN or infinite (weights are never negative: 0 keeps every
    non-zero one)."""
    if not math.isfinite(threshold) or threshold < 0:
        raise InvalidInput(f"threshold is {threshold}; it must be a finite number of at least 0")


async def embed_sparse(plane: DataPlane, model: ServedModel, texts: Sequence[str], *, threshold: float = 0.0,
                       truncate: bool = False, direction: Direction = "right", deadline: float) -> SparseEmbedded:
    """The (ids, weights) above `threshold` of each text's SPLADE vector."""
    check_threshold(threshold)
    done = await plane.compute_texts(model, texts, truncate=truncate, deadline=deadline, direction=direction)
    return SparseEmbedded([sparsify(r.get("sparse_weights"), threshold) for r in done.results], done)
