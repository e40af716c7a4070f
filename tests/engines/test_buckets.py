"""Shape-bucket planning for GPU engines (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from millibatch.engines.buckets import (
    BucketPlan,
    TensorSpec,
    buffer_bytes,
    largest_buffer_bytes,
    nbytes,
    output_shape,
)


def test_buckets_are_clipped_to_max_length_which_is_always_last() -> None:
    assert BucketPlan.build(32, 128).lengths == (16, 32, 64, 128)
    assert BucketPlan.build(32, 100).lengths == (16, 32, 64, 100)
    assert BucketPlan.build(8, 10).lengths == (10,)
    assert BucketPlan.build(8, 512, lengths=(128, 8, 8)).lengths == (8, 128, 512)


@given(max_length=st.integers(1, 1024), length=st.integers(1, 1024), rows=st.integers(1, 64))
def test_every_batch_maps_to_the_smallest_bucket_that_holds_it(max_length: int, length: int, rows: int) -> None:
    plan = BucketPlan.build(64, max_length)
    length = min(length, max_length)
    bucket = plan.bucket(rows, length)
    assert bucket.length >= length
    assert all(n < length for n in plan.lengths[: bucket.index])
    assert plan.lengths[bucket.index] == bucket.length == plan.padded_length(length)


def test_out_of_range_batches_are_refused() -> None:
    plan = BucketPlan.build(8, 128)
    with pytest.raises(ValueError, match="rows"):
        plan.bucket(9, 16)
    with pytest.raises(ValueError, match="length"):
        plan.bucket(1, 129)
    with pytest.raises(ValueError):
        BucketPlan.build(0, 128)
    # Longer-than-max rows are truncated by the tokenizer, so padded_length clips rather than fails.
    assert plan.padded_length(500) == 128


def test_profiles_are_instance_major_and_fix_the_bucket_length() -> None:
    plan = BucketPlan.build(32, 128)  # 4 buckets
    b64 = plan.bucket(3, 40)
    assert (b64.index, b64.length) == (2, 64)
    assert [plan.profile_index(i, b64) for i in range(3)] == [2, 6, 10]
    shapes = plan.profile_shapes(b64)
    assert shapes.min == (1, 64) and shapes.opt == (16, 64) and shapes.max == (32, 64)
    assert plan.profile_shapes(b64, opt_rows=100).opt == (32, 64)


@given(max_rows=st.integers(1, 200), rows=st.integers(1, 200), length=st.integers(1, 128))
def test_a_graph_batch_pads_rows_to_the_next_graph_row_count(max_rows: int, rows: int, length: int) -> None:
    plan = BucketPlan.build(max_rows, 128)
    rows = min(rows, max_rows)
    graph_id, padded_rows = plan.graph_shape(rows, length)
    assert rows <= padded_rows <= max(1, 2 * rows - 1) or padded_rows == max_rows
    assert padded_rows in plan.graph_rows and plan.graph_rows[-1] == max_rows
    bucket = plan.bucket(rows, length)
    assert graph_id == bucket.index * len(plan.graph_rows) + plan.graph_rows.index(padded_rows)


def test_graph_rows_are_powers_of_two_then_max_rows() -> None:
    assert BucketPlan.build(64, 128).graph_rows == (1, 2, 4, 8, 16, 32, 64)
    assert BucketPlan.build(48, 128).graph_rows == (1, 2, 4, 8, 16, 32, 48)
    assert BucketPlan.build(1, 128).graph_rows == (1,)
    plan = BucketPlan.build(64, 128)  # 4 length buckets x 7 row counts: ids 0..27, each used once
    ids = {plan.graph_shape(rows, n) for rows in range(1, 65) for n in (16, 32, 64, 128)}
    assert sorted(i for i, _ in ids) == list(range(28))


def test_output_shapes_replace_symbolic_dims() -> None:
    assert output_shape(("batch", 384), 7, 64) == (7, 384)
    assert output_shape((None, "seq", 3), 7, 64) == (7, 64, 3)
    assert output_shape((-1, 384), 2, 16) == (2, 384)
    with pytest.raises(ValueError, match="fixed batch"):
        output_shape((1, 384), 2, 16)


def test_buffer_sizes_per_bucket() -> None:
    plan = BucketPlan.build(32, 128)
    tensors = [
        TensorSpec("input_ids", np.dtype(np.int64), ("batch", "seq")),
        TensorSpec("embeddings", np.dtype(np.float16), ("batch", 384)),
    ]
    assert buffer_bytes(plan.bucket(1, 16), tensors) == {"input_ids": 32 * 16 * 8, "embeddings": 32 * 384 * 2}
    assert largest_buffer_bytes(plan, tensors) == {"input_ids": 32 * 128 * 8, "embeddings": 32 * 384 * 2}
    assert nbytes((0, 5), np.float32) == 0
