"""The CUDA runtime wrapper's host-side parts, which need no GPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from millibatch.engines import cuda_runtime


def test_host_view_aliases_raw_memory_without_copying() -> None:
    raw = (ctypes.c_byte * 64)()
    view = cuda_runtime.host_view(ctypes.addressof(raw), 64, np.int64, (2, 3))
    view[:] = [[1, 2, 3], [4, 5, 6]]
    assert np.frombuffer(bytes(raw), dtype=np.int64, count=6).tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="needs 72 bytes"):
        cuda_runtime.host_view(ctypes.addressof(raw), 64, np.int64, (3, 3))


def test_device_count_is_zero_not_an_error_without_a_gpu() -> None:
    count = cuda_runtime.device_count()
    assert count >= 0
    if not cuda_runtime.available():
        assert count == 0
