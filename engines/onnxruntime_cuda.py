"""ONNX Runtime on a CUDA GPU with IO binding: device buffers per instance and length bucket, pinned host
staging, one CUDA stream per instance. Optionally through ONNX Runtime's TensorRT execution provider.

Per call: tokens are written into the instance's pinned buffers, copied to its device buffers on its
own stream, the session runs on that stream (`user_compute_stream`), outputs land in device buffers
bound once, are copied back into pinned memory on the same stream, and the stream is synchronised once.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from millibatch.engines import cuda_runtime as cuda
from millibatch.engines.base import EngineInfo, EngineInputs, FloatArray, synthetic_inputs
from millibatch.engines.buckets import BucketPlan, TensorSpec, largest_buffer_bytes, output_shape
from millibatch.engines.select import EngineUnavailable

OrtProvider = Literal["cuda", "tensorrt"]
log = logging.getLogger("millibatch.engines")

#: Runs of each graph shape that capture it: ONNX Runtime's CUDA provider runs a graph id twice before it
#: captures it (min_num_runs_before_cuda_graph_capture_), on the third.
GRAPH_CAPTURE_RUNS = 3
#: `gpu_graph_id` that runs without a CUDA graph (ONNX Runtime's kCudaGraphAnnotationSkip).
NO_GRAPH = -1

#: What ONNX Runtime says when a session cannot capture CUDA graphs (some node runs on another provider).
GRAPHS_REFUSED = "cannot use the graph capture feature"

#: ONNX tensor type strings to numpy dtypes, for the types our graphs use.
ONNX_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}


def cuda_provider_options(device_id: int, stream: int, cuda_graphs: bool) -> dict[str, str]:
    """CUDA execution provider options: this instance's stream, and CUDA graphs only when asked."""
    return {
        "device_id": str(device_id),
        "user_compute_stream": str(stream),
        # Older ORT releases needed the flag as well as the stream; newer ones infer it.
        "has_user_compute_stream": "1",
        # Kernels are searched once per shape; exhaustive search pays off for a long-running server.
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "enable_cuda_graph": "1" if cuda_graphs else "0",
    }


def profile_shape_strings(plan: BucketPlan, input_names: list[str]) -> dict[str, str]:
    """TensorRT EP `trt_profile_{min,opt,max}_shapes`: one profile per length bucket (names repeated)."""
    parts: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for bucket in plan.buckets:
        shapes = plan.profile_shapes(bucket)
        for key, (rows, length) in (("min", shapes.min), ("opt", shapes.opt), ("max", shapes.max)):
            parts[key].extend(f"{name}:{rows}x{length}" for name in input_names)
    return {f"trt_profile_{key}_shapes": ",".join(values) for key, values in parts.items()}


def tensorrt_provider_options(
    plan: BucketPlan, input_names: list[str], *, device_id: int, stream: int, fp16: bool, cache_dir: Path | None,
) -> dict[str, str]:
    """TensorRT execution provider options: precision, engine cache folder and explicit profile shapes."""
    options = {
        "device_id": str(device_id),
        "user_compute_stream": str(stream),
        "has_user_compute_stream": "1",
        "trt_fp16_enable": "1" if fp16 else "0",
        **profile_shape_strings(plan, input_names),
    }
    if cache_dir is not None:
        # Building TensorRT engines takes minutes; the cache makes restarts take seconds.
        options |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache_dir)}
    return options


@functools.cache  # once per process
def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu was built for from the NVIDIA pip packages
    (nvidia-cublas, nvidia-cudnn-cu13, ...) installed beside it, before the first CUDA session. Without
    it the CUDA provider finds them only on the loader's path, or where torch was imported first.
    Releases before 1.21 have no preloading; libraries on the loader's path work either way."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def check_providers(session: Any, wanted: str) -> None:
    """ONNX Runtime falls back to the CPU provider when a GPU provider fails to load (a missing CUDA
    library, say), logging it only: a CUDA engine that runs on CPU must fail at start-up instead."""
    used = session.get_providers()
    if not used or used[0] != wanted:
        raise EngineUnavailable(f"onnxruntime could not start {wanted} (session runs on {used}); check that "
                                "the CUDA and cuDNN libraries onnxruntime-gpu was built for are installed")


Backend = cuda.CudaBackend | cuda.HostBackend
StreamLike = cuda.Stream | cuda.HostStream
BufferLike = cuda.PinnedBuffer | cuda.HostBuffer


@dataclass
class _Instance:
    """One session with its stream, and its pinned staging and device buffers."""

    session: Any
    stream: StreamLike
    binding: Any
    #: Run options by CUDA graph id (`BucketPlan.graph_shape`); none without graphs.
    run_options: list[Any]
    #: Run options without a graph: every call without graphs, and with them calls from any thread but
    #: the one that captured them.
    no_graph: Any
    #: The thread whose ONNX Runtime context holds this instance's CUDA graphs (`prepare_thread`).
    graph_thread: int | None = None
    #: One pinned (host) and one device buffer per graph input/output, sized for the largest bucket:
    #: every bind passes its own shape, so one buffer serves every bucket and its address never moves.
    pinned: dict[str, BufferLike] = field(default_factory=dict)
    device: dict[str, BufferLike | cuda.DeviceBuffer] = field(default_factory=dict)


class OnnxRuntimeCudaEngine:
    """Runs an ONNX graph on a CUDA GPU through ONNX Runtime with IO binding; one session per instance."""

    def __init__(
        self,
        onnx_path: Path,
        plan: BucketPlan,
        *,
        instances: int = 1,
        device_id: int = 0,
        provider: OrtProvider = "cuda",
        precision: str = "fp32",
        trt_fp16: bool = False,
        trt_cache_dir: Path | None = None,
        cuda_graphs: bool = True,
        input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids"),
        reason: str = "requested",
        backend: Backend | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        if backend is None:
            load_cuda_libraries()
        # HostBackend runs this exact IO-binding path on the CPU provider, which is how it is tested without a GPU.
        self._backend: Backend = backend if backend is not None else cuda.CudaBackend()
        self._plan = plan
        self._device_id = device_id
        # The TensorRT provider has graphs of its own; these are the CUDA provider's.
        self._cuda_graphs = cuda_graphs and provider == "cuda"
        graphs = "CUDA graphs" if self._cuda_graphs else "no CUDA graphs"
        self._input_names = list(input_names)
        self._instances: list[_Instance] = []
        try:
            for _ in range(instances):
                try:
                    self._instances.append(self._make_instance(onnx_path, provider, trt_fp16, trt_cache_dir))
                except Exception as exc:
                    if not (self._cuda_graphs and GRAPHS_REFUSED in str(exc)):
                        raise
                    # ONNX Runtime captures only graphs whose nodes all run on the CUDA provider: serve
                    # this model without graphs rather than not at all, and say so.
                    self._cuda_graphs = False
                    graphs = f"no CUDA graphs: onnxruntime refused them ({GRAPHS_REFUSED})"
                    log.warning("CUDA graphs off for %s: onnxruntime refused them: %s", onnx_path, exc)
                    self._instances.append(self._make_instance(onnx_path, provider, trt_fp16, trt_cache_dir))
        except BaseException:
            self.close()
            raise
        first = self._instances[0].session
        self._inputs = [TensorSpec(i.name, ONNX_TYPES[i.type], tuple(i.shape)) for i in first.get_inputs()]
        self._outputs = [TensorSpec(o.name, ONNX_TYPES[o.type], tuple(o.shape)) for o in first.get_outputs()]
        sizes = largest_buffer_bytes(plan, self._inputs + self._outputs)
        for instance in self._instances:
            instance.pinned = {name: self._backend.pinned(size) for name, size in sizes.items()}
            instance.device = {name: self._backend.device_buffer(size) for name, size in sizes.items()}
        used = "TensorRT execution provider" if provider == "tensorrt" else "CUDA execution provider"
        if self._backend.device == "cpu":
            used = "CPU execution provider, host backend"
        self._info = EngineInfo(engine="onnxruntime", device=self._backend.device,
                                precision="fp16" if trt_fp16 else precision, instances=instances,
                                reason=f"{reason} ({used}, IO binding, {graphs})")
        self._warm_buckets()

    def _warm_buckets(self) -> None:
        """Run every bucket's largest batch once per instance, so ORT's arena and kernel selection happen at
        load time, not under traffic (without graphs: those are captured by `prepare_thread`)."""
        for index in range(len(self._instances)):
            for bucket in self._plan.buckets:
                self.run(synthetic_inputs(self._plan.max_rows, bucket.length), index)

    def _make_instance(self, onnx_path: Path, provider: OrtProvider, fp16: bool, cache_dir: Path | None) -> _Instance:
        ort = self._ort
        stream = self._backend.stream()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        cuda_options = cuda_provider_options(self._device_id, stream.handle, self._cuda_graphs)
        providers: list[tuple[str, dict[str, str]]] = [("CUDAExecutionProvider", cuda_options)]
        if self._backend.device == "cpu":
            providers = [("CPUExecutionProvider", {})]
        elif provider == "tensorrt":
            trt = tensorrt_provider_options(self._plan, self._input_names, device_id=self._device_id,
                                            stream=stream.handle, fp16=fp16, cache_dir=cache_dir)
            providers.insert(0, ("TensorrtExecutionProvider", trt))
        session = self._new_session(onnx_path, options, providers)
        check_providers(session, providers[0][0])
        graphs = len(self._plan.buckets) * len(self._plan.graph_rows) if self._cuda_graphs else 0
        run_options = [self._run_config(graph_id) for graph_id in range(graphs)]
        no_graph = self._run_config(NO_GRAPH if self._cuda_graphs else None)
        return _Instance(session, stream, session.io_binding(), run_options, no_graph)

    def _new_session(self, onnx_path: Path, options: Any, providers: list[tuple[str, dict[str, str]]]) -> Any:
        return self._ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)

    def _run_config(self, graph_id: int | None) -> Any:
        run_config = self._ort.RunOptions()
        # We copy outputs back on the same stream and synchronise once ourselves.
        run_config.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if graph_id is not None:
            run_config.add_run_config_entry("gpu_graph_id", str(graph_id))
        return run_config

    def prepare_thread(self, instance: int) -> None:
        """Capture `instance`'s CUDA graphs on the calling thread, the one that will serve it: ONNX Runtime
        keeps graphs per thread, and capturing one fails any CUDA work of another thread meanwhile, so
        the batcher calls this on each engine thread in turn before traffic. Calls from any other thread
        run without graphs (start-up warm-up and profiling). Nothing to do without graphs."""
        if not self._cuda_graphs:
            return
        self._instances[instance].graph_thread = threading.get_ident()
        for bucket in self._plan.buckets:
            for rows in self._plan.graph_rows:
                batch = synthetic_inputs(rows, bucket.length)
                for _ in range(GRAPH_CAPTURE_RUNS):
                    self.run(batch, instance)

    def run_shape(self, rows: int, length: int, instance: int) -> tuple[int, int]:
        """(CUDA graph id or NO_GRAPH, rows to run) for a batch on `instance` from the calling thread."""
        if self._cuda_graphs and self._instances[instance].graph_thread == threading.get_ident():
            return self._plan.graph_shape(rows, length)
        return NO_GRAPH, rows

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def padded_length(self, length: int) -> int:
        return self._plan.padded_length(length)

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        state = self._instances[instance]
        rows, length = inputs.rows, inputs.padded_length
        bucket = self._plan.bucket(rows, length)
        if bucket.length != length:
            raise ValueError(f"batch padded to {length}, engine expects bucket lengths {self._plan.lengths}")
        # CUDA graphs replay fixed shapes and addresses, so with them rows are padded to the graph's rows.
        graph_id, run_rows = self.run_shape(rows, length, instance)
        device = self._backend.device
        binding = state.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for spec in self._inputs:
            pinned, target = state.pinned[spec.name], state.device[spec.name].pointer
            host = pinned.view(spec.dtype, (run_rows, length))
            host[:rows] = getattr(inputs, spec.name)
            if run_rows > rows:
                host[rows:] = 0
                if spec.name == "attention_mask":
                    host[rows:, 0] = 1  # a fully masked pad row would divide by zero in mean pooling
            self._backend.copy_to_device(target, pinned.pointer, host.nbytes,
                                         state.stream)  # type: ignore[arg-type]  # stream matches its backend
            binding.bind_input(spec.name, device, self._device_id, spec.dtype, [run_rows, length], target)
        for spec in self._outputs:
            binding.bind_output(spec.name, device, self._device_id, spec.dtype,
                                list(output_shape(spec.shape, run_rows, length)), state.device[spec.name].pointer)
        options = state.no_graph if graph_id == NO_GRAPH else state.run_options[graph_id]
        state.session.run_with_iobinding(binding, options)
        views = {}
        for spec in self._outputs:
            pinned = state.pinned[spec.name]
            views[spec.name] = pinned.view(spec.dtype, output_shape(spec.shape, rows, length))
            self._backend.copy_to_host(pinned.pointer, state.device[spec.name].pointer, views[spec.name].nbytes,
                                       state.stream)  # type: ignore[arg-type]
        state.stream.synchronize()
        # Copy out of the pinned buffers: the next call on this instance overwrites them.
        return {name: np.array(view, dtype=np.float32, copy=True) for name, view in views.items()}

    def close(self) -> None:
        for state in self._instances:
            state.binding = None
            state.session = None
            for buffer in [*state.pinned.values(), *state.device.values()]:
                buffer.close()
            state.stream.close()
        self._instances.clear()
