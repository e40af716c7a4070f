"""Sparse (SPLADE) vectors: a row of vocabulary weights from a sparse-embed graph as (indices, values)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def sparsify(
    weights: npt.NDArray[np.float32], threshold: float = 0.0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The token ids (ascending) and weights of one [vocab] row whose weight is above `threshold`;
    weights at or below it are dropped (0 drops only the zeros)."""
    if weights.ndim != 1:
        raise ValueError(f"expected one row of vocabulary weights, got shape {weights.shape}")
    indices = np.flatnonzero(weights > threshold)  # ascending by construction
    return indices.astype(np.int64), weights[indices].astype(np.float32)
