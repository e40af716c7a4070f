"""Native TensorRT runtime for prebuilt plans: one execution context per instance, each with its own CUDA
stream, its own optimization profiles (one per length bucket), and pinned host plus device buffers that
are allocated once and reused for every call.

Uses the name-based TensorRT 10 API: `set_input_shape`, `set_tensor_address`, `execute_async_v3`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from millibatch.engines import cuda_runtime as cuda
from millibatch.engines.base import EngineInfo, EngineInputs, FloatArray
from millibatch.engines.buckets import ShapeTemplate, TensorSpec, largest_buffer_bytes, nbytes
from millibatch.engines.plans import PlanSpec


def tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None when it is not installed."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return str(trt.__version__)


Backend = cuda.CudaBackend | cuda.HostBackend


@dataclass
class _Context:
    """One execution context with its stream, buffers and currently active profile."""

    context: Any
    stream: Any
    pinned: dict[str, Any]
    device: dict[str, Any]
    #: Active optimization profile; -1 until the first call selects one.
    profile: int = -1


class TensorRtEngine:
    """Runs a TensorRT plan listed in the model manifest (see engines/plans.py for the layout)."""

    def __init__(
        self, model_dir: Path, spec: PlanSpec, *, instances: int = 1, reason: str = "requested",
        backend: Backend | None = None,
    ) -> None:
        import tensorrt as trt

        # HostBackend swaps CUDA memory for host memory so the buffer logic can be tested without a GPU.
        self._backend: Backend = backend if backend is not None else cuda.CudaBackend()
        self._plan = spec.buckets
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine((model_dir / spec.file).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {spec.file} (see the TensorRT log above)")
        if self._engine.num_optimization_profiles < spec.profile_count:
            raise RuntimeError(f"{spec.file} has {self._engine.num_optimization_profiles} optimization profiles, "
                               f"the manifest promises {spec.profile_count}")
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dims: ShapeTemplate = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            tensor = TensorSpec(name, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))), dims)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append(tensor)
        sizes = largest_buffer_bytes(self._plan, self._inputs + self._outputs)
        self._contexts: list[_Context] = []
        try:
            for _ in range(instances):
                context = self._engine.create_execution_context()
                self._contexts.append(_Context(
                    context, self._backend.stream(),
                    pinned={name: self._backend.pinned(size) for name, size in sizes.items()},
                    device={name: self._backend.device_buffer(size) for name, size in sizes.items()},
                ))
        except BaseException:
            self.close()
            raise
        self._info = EngineInfo(engine="tensorrt", device="cuda", precision=spec.precision, instances=instances,
                                reason=f"{reason} (plan {spec.file})")

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def padded_length(self, length: int) -> int:
        return self._plan.padded_length(length)

    def _select_profile(self, state: _Context, instance: int, rows: int, length: int) -> None:
        bucket = self._plan.bucket(rows, length)
        if bucket.length != length:
            raise ValueError(f"batch padded to {length}, plan expects bucket lengths {self._plan.lengths}")
        profile = self._plan.profile_index(instance, bucket)
        if profile != state.profile:
            if not state.context.set_optimization_profile_async(profile, state.stream.handle):
                raise RuntimeError(f"TensorRT refused optimization profile {profile}")
            state.profile = profile
            # Addresses are bound once per profile switch; the buffers themselves never move.
            for name, buffer in state.device.items():
                if not state.context.set_tensor_address(name, buffer.pointer):
                    raise RuntimeError(f"TensorRT refused the address for tensor {name}")

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        state = self._contexts[instance]
        rows, length = inputs.rows, inputs.padded_length
        self._select_profile(state, instance, rows, length)
        for spec in self._inputs:
            host = state.pinned[spec.name].view(spec.dtype, (rows, length))
            host[...] = getattr(inputs, spec.name)  # casts int64 ids to the plan's int32 when it uses int32
            if not state.context.set_input_shape(spec.name, (rows, length)):
                raise ValueError(f"shape {(rows, length)} for {spec.name} is outside profile {state.profile}")
            self._backend.copy_to_device(state.device[spec.name].pointer, state.pinned[spec.name].pointer,
                                nbytes((rows, length), spec.dtype), state.stream)
        if not state.context.execute_async_v3(state.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        views = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in state.context.get_tensor_shape(spec.name))
            self._backend.copy_to_host(state.pinned[spec.name].pointer, state.device[spec.name].pointer,
                              nbytes(shape, spec.dtype), state.stream)
            views[spec.name] = state.pinned[spec.name].view(spec.dtype, shape)
        state.stream.synchronize()
        # fp16 plans return float16; the rest of the server works in float32. Copy: buffers are reused.
        return {name: np.array(view, dtype=np.float32, copy=True) for name, view in views.items()}

    def close(self) -> None:
        for state in self._contexts:
            state.stream.synchronize()
            state.context = None
            for pinned in state.pinned.values():
                pinned.close()
            for device in state.device.values():
                device.close()
            state.stream.close()
        self._contexts.clear()
