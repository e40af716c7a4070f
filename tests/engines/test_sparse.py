"""engines/sparse.py: one row of vocabulary weights as sorted (indices, values) above a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from millibatch.engines.sparse import sparsify


def test_keeps_weights_above_the_threshold_sorted_by_index() -> None:
    row = np.array([0.0, 0.5, 0.0, 2.0, 0.25, 0.0, 1.0], dtype=np.float32)
    indices, values = sparsify(row)
    assert indices.tolist() == [1, 3, 4, 6] and values.tolist() == [0.5, 2.0, 0.25, 1.0]
    assert indices.dtype == np.int64 and values.dtype == np.float32
    indices, values = sparsify(row, threshold=0.5)  # at the threshold: dropped
    assert indices.tolist() == [3, 6] and values.tolist() == [2.0, 1.0]


def test_an_all_zero_row_is_empty_and_a_batch_is_refused() -> None:
    indices, values = sparsify(np.zeros(8, dtype=np.float32))
    assert indices.size == values.size == 0
    with pytest.raises(ValueError, match="one row"):
        sparsify(np.zeros((2, 8), dtype=np.float32))
