"""Padding rows into the engine's arrays: the row-by-row path for small batches and the scatter for large
ones must give the same arrays."""

from __future__ import annotations

import numpy as np
import pytest

from millibatch.batching.collate import ROW_BY_ROW, collate
from millibatch.batching.work import Row


def rows_of(lengths: list[int]) -> list[Row]:
    rng = np.random.default_rng(sum(lengths))
    return [Row(ids=rng.integers(1, 30_000, n, dtype=np.int64), type_ids=rng.integers(0, 2, n, dtype=np.int64))
            for n in lengths]


def expected(rows: list[Row], padded: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), padded), np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, :row.length] = row.ids
        types[index, :row.length] = row.type_ids
        mask[index, :row.length] = 1
    return ids, types, mask


@pytest.mark.parametrize("count", [1, 2, ROW_BY_ROW, ROW_BY_ROW + 1, 32])
def test_both_paths_pad_alike(count: int) -> None:
    lengths = [3 + (7 * i) % 20 for i in range(count)]
    rows = rows_of(lengths)
    padded = max(lengths) + 5
    inputs = collate(rows, padded)
    ids, types, mask = expected(rows, padded)
    for got, want in ((inputs.input_ids, ids), (inputs.token_type_ids, types), (inputs.attention_mask, mask)):
        assert got.dtype == np.int64
        assert got.shape == (count, padded)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("count", [1, ROW_BY_ROW + 1])
def test_a_row_as_long_as_the_batch_needs_no_padding(count: int) -> None:
    rows = rows_of([16] * count)
    inputs = collate(rows, 16)
    assert inputs.attention_mask.all()
    np.testing.assert_array_equal(inputs.input_ids, np.stack([row.ids for row in rows]))
