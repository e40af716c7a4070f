"""Shape buckets for GPU engines: which padded (rows, length) a batch runs at, and the buffers each needs.

GPU engines keep device buffers, TensorRT optimization profiles and (optionally) CUDA graphs per
length bucket, so a batch is padded up to the nearest bucket length instead of a multiple of 8. Pure
logic, no CUDA: everything here is tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

#: Sequence lengths a GPU batch is padded to (clipped to the model's max_length, which is always added).
DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)

#: An output's shape as the graph declares it: ints are fixed, strings/None are symbolic.
ShapeTemplate = tuple[int | str | None, ...]


@dataclass(frozen=True)
class Bucket:
    """One shape bucket: a batch of up to `max_rows` rows padded to exactly `length` tokens."""

    #: Position in the plan's length buckets (also the CUDA-graph id and per-instance profile offset).
    index: int
    #: Padded sequence length of every batch in this bucket.
    length: int
    #: Most rows a batch in this bucket may have.
    max_rows: int


@dataclass(frozen=True)
class ProfileShapes:
    """A TensorRT optimization profile for one bucket: min/opt/max (rows, length) of every input."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]


@dataclass(frozen=True)
class BucketPlan:
    """The length buckets an engine serves, and the largest batch it accepts."""

    #: Ascending padded lengths; the last equals the model's max_length.
    lengths: tuple[int, ...]
    #: Most rows in one engine call.
    max_rows: int

    @classmethod
    def build(cls, max_rows: int, max_length: int, lengths: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS) -> BucketPlan:
        """Buckets up to `max_length` (which always is the last bucket) for batches of up to `max_rows`."""
        if max_rows < 1 or max_length < 1:
            raise ValueError(f"max_rows and max_length must be >= 1, got {max_rows} and {max_length}")
        kept = sorted({n for n in lengths if 0 < n < max_length} | {max_length})
        return cls(tuple(kept), max_rows)

    @cached_property
    def buckets(self) -> tuple[Bucket, ...]:
        """Every bucket, shortest first."""
        return tuple(Bucket(i, n, self.max_rows) for i, n in enumerate(self.lengths))

    @cached_property
    def _bucket_of_length(self) -> tuple[Bucket, ...]:
        """The bucket for every length 0..max_length, computed once: the scheduler asks per waiting row."""
        return tuple(next(b for b in self.buckets if max(n, 1) <= b.length) for n in range(self.max_length + 1))

    @property
    def max_length(self) -> int:
        """The longest padded length served."""
        return self.lengths[-1]

    def bucket(self, rows: int, length: int) -> Bucket:
        """The bucket a batch of `rows` rows whose longest row has `length` tokens runs in."""
        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"batch of {rows} rows is outside 1..{self.max_rows}")
        if not 1 <= length <= self.max_length:
            raise ValueError(f"length {length} is outside 1..{self.max_length}")
        return self._bucket_of_length[length]

    def padded_length(self, length: int) -> int:
        """The length a batch whose longest row is `length` tokens is padded to (clipped to max_length)."""
        return self._bucket_of_length[min(max(length, 1), self.max_length)].length

    @cached_property
    def graph_rows(self) -> tuple[int, ...]:
        """Row counts a CUDA-graph batch is padded to: powers of two below max_rows, then max_rows. A
        graph replays one fixed shape, so rows are padded too, but only to the next of these: padding
        one row to max_rows cost 2.9x its time at 128 tokens on the H100 (docs/GPU.md)."""
        return (*(1 << i for i in range(self.max_rows.bit_length()) if 1 << i < self.max_rows), self.max_rows)

    def graph_shape(self, rows: int, length: int) -> tuple[int, int]:
        """(graph id, padded rows) of the CUDA graph that runs a batch of `rows` rows at `length`: one graph
        per length bucket and row count of `graph_rows`, numbered length-major."""
        bucket = self.bucket(rows, length)
        row_index = next(i for i, n in enumerate(self.graph_rows) if rows <= n)
        return bucket.index * len(self.graph_rows) + row_index, self.graph_rows[row_index]

    def profile_index(self, instance: int, bucket: Bucket) -> int:
        """TensorRT profile for `bucket` on `instance`: profiles are laid out instance-major.

        Concurrent execution contexts must not share a dynamic-shape profile, so a plan for N instances
        holds N copies of the bucket profiles and instance i uses profiles [i*B, (i+1)*B).
        """
        return instance * len(self.lengths) + bucket.index

    def profile_shapes(self, bucket: Bucket, opt_rows: int | None = None) -> ProfileShapes:
        """Profile for `bucket`: length fixed at the bucket length (we always pad to it), rows 1..max_rows."""
        opt = opt_rows if opt_rows is not None else max(1, self.max_rows // 2)
        return ProfileShapes(min=(1, bucket.length), opt=(min(opt, self.max_rows), bucket.length),
                             max=(self.max_rows, bucket.length))


def output_shape(template: ShapeTemplate, rows: int, length: int) -> tuple[int, ...]:
    """Concrete output shape: the first dim is rows, other symbolic dims are the sequence length."""
    shape: list[int] = []
    for axis, dim in enumerate(template):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        else:
            shape.append(rows if axis == 0 else length)
    if shape and isinstance(template[0], int) and template[0] > 0 and template[0] != rows:
        raise ValueError(f"output declares a fixed batch dimension {template[0]}, cannot hold {rows} rows")
    return tuple(shape)


def nbytes(shape: tuple[int, ...], dtype: npt.DTypeLike) -> int:
    """Bytes a dense tensor of `shape` and `dtype` takes."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, element type and declared shape."""

    name: str
    dtype: np.dtype[Any]
    shape: ShapeTemplate


def buffer_bytes(bucket: Bucket, tensors: list[TensorSpec]) -> dict[str, int]:
    """Bytes each tensor needs for the largest batch of `bucket` (max_rows x bucket length)."""
    return {t.name: nbytes(output_shape(t.shape, bucket.max_rows, bucket.length), t.dtype) for t in tensors}


def largest_buffer_bytes(plan: BucketPlan, tensors: list[TensorSpec]) -> dict[str, int]:
    """Bytes each tensor needs for the largest bucket; one buffer this size serves every bucket."""
    return buffer_bytes(plan.buckets[-1], tensors)
