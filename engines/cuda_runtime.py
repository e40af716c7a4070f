"""A thin, checked wrapper over the CUDA runtime from cuda-python: streams, pinned and device memory, copies.

Both GPU engines use it so that every CUDA call's error code is checked in one place. Importing this module
never needs a GPU; `available()` and `device_count()` say whether one can be used.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np
import numpy.typing as npt


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error string."""


@functools.cache  # one import per process, not one per CUDA call (an ImportError is not cached)
def _cudart() -> Any:
    """The cuda-python runtime module (new `cuda.bindings` layout first, then the older `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[import-not-found,unused-ignore,attr-defined]
    return runtime


def available() -> bool:
    """True when cuda-python is importable (a GPU may still be absent; see `device_count`)."""
    try:
        _cudart()
    except ImportError:
        return False
    return True


def check(call: str, result: Any) -> Any:
    """Unpack a cuda-python `(error, *values)` tuple, raising `CudaError` unless the error is cudaSuccess."""
    rt = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise CudaError(f"{call} failed: {err!r} {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Visible CUDA devices; 0 without cuda-python, a driver, or a GPU (never raises)."""
    try:
        return int(check("cudaGetDeviceCount", _cudart().cudaGetDeviceCount()))
    except (ImportError, CudaError, RuntimeError):
        return 0


def compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) compute capability of `device`, e.g. (9, 0) for an H100."""
    props = check("cudaGetDeviceProperties", _cudart().cudaGetDeviceProperties(device))
    return int(props.major), int(props.minor)


def host_view(pointer: int, nbytes: int, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """A numpy array over `nbytes` of host memory at `pointer` (no copy); the caller keeps the memory alive."""
    raw = (ctypes.c_byte * nbytes).from_address(pointer)
    return _typed(np.frombuffer(memoryview(raw), dtype=np.uint8), dtype, shape)


def _typed(raw: npt.NDArray[np.uint8], dtype: npt.DTypeLike, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """The first bytes of `raw` as an array of `shape` and `dtype` (no copy)."""
    dtype = np.dtype(dtype)
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if needed > raw.nbytes:
        raise ValueError(f"view of {shape} {dtype} needs {needed} bytes, buffer has {raw.nbytes}")
    return raw[:needed].view(dtype).reshape(shape)


class _HostMemory:
    """Host memory at `pointer` that engines fill and read through numpy views every batch."""

    nbytes: int
    pointer: int

    def _map(self) -> None:
        # One byte view for the buffer's life; `view` only slices and retypes it.
        self._bytes = host_view(self.pointer, self.nbytes, np.uint8, (self.nbytes,))

    def view(self, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """The first bytes of the buffer as an array of `shape` (no copy)."""
        return _typed(self._bytes, dtype, shape)


class Stream:
    """A non-blocking CUDA stream, so one instance's work never waits on the legacy default stream."""

    def __init__(self) -> None:
        rt = _cudart()
        self._stream = check("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        #: The raw cudaStream_t as an integer (what ORT's user_compute_stream and TensorRT take).
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        """Block until all work queued on this stream has finished."""
        check("cudaStreamSynchronize", _cudart().cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        """Destroy the stream (idempotent)."""
        if self._stream is not None:
            check("cudaStreamDestroy", _cudart().cudaStreamDestroy(self._stream))
            self._stream = None


class PinnedBuffer(_HostMemory):
    """Page-locked host memory: copies from it to the GPU are true async DMA instead of staged copies."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(1, nbytes)
        self.pointer = int(check("cudaMallocHost", _cudart().cudaMallocHost(self.nbytes)))
        self._map()

    def close(self) -> None:
        """Free the memory (idempotent); views taken earlier must not be used afterwards."""
        if self.pointer:
            check("cudaFreeHost", _cudart().cudaFreeHost(self.pointer))
            self.pointer = 0


class DeviceBuffer:
    """Device memory allocated once and reused for every call."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(1, nbytes)
        self.pointer = int(check("cudaMalloc", _cudart().cudaMalloc(self.nbytes)))

    def close(self) -> None:
        """Free the memory (idempotent)."""
        if self.pointer:
            check("cudaFree", _cudart().cudaFree(self.pointer))
            self.pointer = 0


class CudaBackend:
    """Where the ORT CUDA engine's buffers, streams and copies live: a CUDA GPU (the real thing)."""

    #: ONNX Runtime device type for bound buffers.
    device = "cuda"

    def __init__(self) -> None:
        rt = _cudart()
        self._memcpy_async = rt.cudaMemcpyAsync
        self._to_device = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._to_host = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def stream(self) -> Stream:
        """A new non-blocking stream."""
        return Stream()

    def pinned(self, nbytes: int) -> PinnedBuffer:
        """Page-locked host staging memory."""
        return PinnedBuffer(nbytes)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        """Device memory."""
        return DeviceBuffer(nbytes)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        """Queue a host→device copy on `stream` (async when `src` is pinned)."""
        check("cudaMemcpyAsync(H2D)", self._memcpy_async(dst, src, nbytes, self._to_device, stream.handle))

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        """Queue a device→host copy on `stream` (async when `dst` is pinned)."""
        check("cudaMemcpyAsync(D2H)", self._memcpy_async(dst, src, nbytes, self._to_host, stream.handle))


class HostStream:
    """Stand-in for a stream when the "device" is host memory: work is already done when queued."""

    handle = 0

    def synchronize(self) -> None:
        """Nothing is ever pending."""

    def close(self) -> None:
        """Nothing to release."""


class HostBuffer(_HostMemory):
    """Ordinary host memory with PinnedBuffer's interface."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(1, nbytes)
        self._memory = (ctypes.c_byte * self.nbytes)()
        self.pointer = ctypes.addressof(self._memory)
        self._map()

    def close(self) -> None:
        """Memory is freed with the object."""


class HostBackend:
    """The same buffer/copy protocol on host memory, so the IO-binding path runs (and is tested) on CPU."""

    device = "cpu"

    def stream(self) -> HostStream:
        """A no-op stream."""
        return HostStream()

    def pinned(self, nbytes: int) -> HostBuffer:
        """Plain host memory standing in for pinned memory."""
        return HostBuffer(nbytes)

    def device_buffer(self, nbytes: int) -> HostBuffer:
        """Plain host memory standing in for device memory."""
        return HostBuffer(nbytes)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: HostStream) -> None:
        """A synchronous memmove."""
        ctypes.memmove(dst, src, nbytes)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: HostStream) -> None:
        """A synchronous memmove."""
        ctypes.memmove(dst, src, nbytes)
