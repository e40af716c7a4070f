"""Choose and load an engine for a model directory: `engine` and `device` names, plus `auto`.

`auto` picks the fastest that can run here: a TensorRT plan on the native runtime, then ONNX Runtime
on CUDA, then ONNX Runtime on CPU. The choice is made by the pure `choose()` from a `Capabilities`
probe, so every rule is tested on CPU; the reason is logged and shown by the Models service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from millibatch.engines.base import Engine, SpinningChoice
from millibatch.engines.model_dir import Manifest
from millibatch.engines.plans import PlanSpec, load_plan_specs, pick_plan
from millibatch.engines.thread_priority import EnginePriority

EngineName = Literal["auto", "onnxruntime", "tensorrt"]
DeviceName = Literal["auto", "cpu", "cuda"]

log = logging.getLogger("millibatch.engines")

GPU_EXTRA_HINT = "pip install 'millibatch[gpu]' (onnxruntime-gpu, cuda-python, nvidia-ml-py)"


class EngineUnavailable(RuntimeError):
    """The requested engine or device cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model: which backend, on what device, how many instances."""

    engine: EngineName = "auto"
    device: DeviceName = "auto"
    #: Engine instances; 0 picks per device (CPU: see auto_instances; GPU: one).
    instances: int = 0
    threads_per_instance: int = 0
    #: Most rows per GPU call (GPU buffers and TensorRT profiles are sized for it).
    max_rows: int = 32
    #: The model's longest input in tokens; a TensorRT plan must cover it (0: unchecked).
    max_length: int = 0
    #: ONNX Runtime on CUDA through the TensorRT execution provider instead of the CUDA one.
    ort_tensorrt_provider: bool = False
    #: fp16 kernels in the TensorRT execution provider.
    ort_tensorrt_fp16: bool = False
    #: Where the TensorRT execution provider caches built engines (None: no cache).
    ort_tensorrt_cache_dir: Path | None = None
    #: CUDA graphs per length bucket and row count in ONNX Runtime's CUDA provider, where it can capture them.
    cuda_graphs: bool = True
    #: CPU intra-op threads spin-wait for work while a batch runs (see onnxruntime_engine.spins).
    cpu_spinning: SpinningChoice = "auto"
    #: How the instance threads sit below the event loop; under `idle` the CPU engine's intra-op threads
    #: start SCHED_IDLE too (None: they keep the loader's priority).
    engine_priority: EnginePriority | None = None


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run, as probed once at model load."""

    #: ONNX Runtime execution providers in this build.
    ort_providers: tuple[str, ...]
    #: Whether cuda-python (streams, pinned memory) is importable.
    cuda_python: bool
    #: Visible CUDA devices (0 without cuda-python, a driver or a GPU).
    cuda_devices: int
    #: Compute capability of device 0, when there is one.
    compute_capability: tuple[int, int] | None = None
    #: Installed TensorRT version, or None.
    tensorrt_version: str | None = None
    #: Plans the model directory lists.
    plans: list[PlanSpec] = field(default_factory=list)


@dataclass(frozen=True)
class Choice:
    """The engine to load and why."""

    engine: Literal["onnxruntime", "tensorrt"]
    device: Literal["cpu", "cuda"]
    reason: str
    plan: PlanSpec | None = None


def onnxruntime_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def probe(model_dir: Path) -> Capabilities:
    """Probe ONNX Runtime, cuda-python, the GPU and TensorRT (never raises for a missing piece)."""
    from millibatch.engines import cuda_runtime
    from millibatch.engines.tensorrt_engine import tensorrt_version

    devices = cuda_runtime.device_count()
    return Capabilities(
        ort_providers=tuple(onnxruntime_providers()),
        cuda_python=cuda_runtime.available(),
        cuda_devices=devices,
        compute_capability=cuda_runtime.compute_capability(0) if devices else None,
        tensorrt_version=tensorrt_version() if devices else None,
        plans=load_plan_specs(model_dir),
    )


def _gpu_problem(caps: Capabilities) -> str | None:
    if not caps.cuda_python:
        return f"cuda-python is not installed ({GPU_EXTRA_HINT})"
    if caps.cuda_devices < 1:
        return "no CUDA GPU is visible (no driver, no device, or CUDA_VISIBLE_DEVICES hides it)"
    return None


def _ort_cuda_problem(caps: Capabilities) -> str | None:
    if "CUDAExecutionProvider" not in caps.ort_providers:
        return f"this onnxruntime has no CUDAExecutionProvider (offers {list(caps.ort_providers)}; {GPU_EXTRA_HINT})"
    return _gpu_problem(caps)


def _tensorrt_problem(caps: Capabilities, model_dir: Path, options: EngineOptions) -> tuple[PlanSpec | None, str]:
    """The plan to run, or None and why TensorRT cannot run."""
    gpu = _gpu_problem(caps)
    if gpu is not None:
        return None, gpu
    if caps.tensorrt_version is None:
        return None, "the tensorrt Python package is not installed (pip install tensorrt)"
    assert caps.compute_capability is not None
    return pick_plan(caps.plans, caps.tensorrt_version, caps.compute_capability, instances_on(options, "cuda"),
                     model_dir, options.max_rows, options.max_length)


def choose(options: EngineOptions, caps: Capabilities, model_dir: Path) -> Choice:
    """Apply the selection rules; raises EngineUnavailable when what was asked for cannot run."""
    engine, device = options.engine, options.device
    if device == "cpu":
        if engine == "tensorrt":
            raise EngineUnavailable("engine 'tensorrt' runs only on CUDA; use --device cuda or auto")
        return Choice("onnxruntime", "cpu", "requested onnxruntime on cpu" if engine == "onnxruntime"
                      else "device cpu requested, so ONNX Runtime on CPU")
    if engine == "tensorrt":
        plan, why = _tensorrt_problem(caps, model_dir, options)
        if plan is None:
            raise EngineUnavailable(f"engine 'tensorrt' cannot run: {why}")
        return Choice("tensorrt", "cuda", f"requested tensorrt: {why}", plan)
    ort_cuda = _ort_cuda_problem(caps)
    if engine == "onnxruntime":
        if ort_cuda is None:
            return Choice("onnxruntime", "cuda", f"onnxruntime requested, device {device}: CUDA GPU available")
        if device == "cuda":
            raise EngineUnavailable(f"device 'cuda' cannot run onnxruntime: {ort_cuda}")
        return Choice("onnxruntime", "cpu", f"auto device: ONNX Runtime on CPU because {ort_cuda}")
    # engine auto: fastest first.
    plan, trt_why = _tensorrt_problem(caps, model_dir, options)
    if plan is not None:
        return Choice("tensorrt", "cuda", f"auto: TensorRT {trt_why}", plan)
    if ort_cuda is None:
        return Choice("onnxruntime", "cuda", f"auto: ONNX Runtime on CUDA (no TensorRT: {trt_why})")
    if device == "cuda":
        raise EngineUnavailable(f"device 'cuda' cannot run: {ort_cuda}; TensorRT: {trt_why}")
    return Choice("onnxruntime", "cpu", f"auto: ONNX Runtime on CPU because {ort_cuda}")


def instances_on(options: EngineOptions, device: DeviceName) -> int:
    """`options.instances`, or for 0 (auto): one on a GPU until more are measured to pay, and on CPU
    one single-threaded instance per core (engines.onnxruntime_engine.auto_instances)."""
    if options.instances:
        return options.instances
    if device == "cuda":
        return 1
    from millibatch.engines.onnxruntime_engine import auto_instances

    return auto_instances()


def load_engine(model_dir: Path, manifest: Manifest, options: EngineOptions) -> Engine:
    """Load the engine `options` ask for, or with `auto` the fastest this machine can run."""
    options = replace(options, max_length=options.max_length or manifest.max_length)
    choice = choose(options, probe(model_dir), model_dir)
    log.info("engine for %s: %s on %s (%s)", manifest.name, choice.engine, choice.device, choice.reason)
    requested = options
    options = replace(options, instances=instances_on(options, choice.device))
    if choice.engine == "tensorrt":
        from millibatch.engines.tensorrt_engine import TensorRtEngine

        assert choice.plan is not None
        return TensorRtEngine(model_dir, choice.plan, instances=options.instances, reason=choice.reason)
    if choice.device == "cuda":
        try:
            return _load_ort_cuda(model_dir, manifest, options, choice.reason)
        except EngineUnavailable as exc:
            # onnxruntime-gpu lists its CUDA provider even where the CUDA libraries it needs are missing;
            # `auto` then serves on the CPU and says why. An explicit `cuda`, or the TensorRT provider
            # asked for by name, fails at start-up instead.
            if options.device != "auto" or options.ort_tensorrt_provider:
                raise
            log.warning("engine for %s: %s; serving on CPU instead", manifest.name, exc)
            choice = Choice("onnxruntime", "cpu", f"auto: ONNX Runtime on CPU because {exc}")
            options = replace(options, instances=instances_on(requested, "cpu"))
    from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine

    return OnnxRuntimeCpuEngine(
        model_dir / manifest.onnx_file,
        instances=options.instances,
        threads_per_instance=options.threads_per_instance,
        precision=manifest.precision,
        reason=choice.reason,
        spinning=options.cpu_spinning,
        priority=options.engine_priority,
    )


def _load_ort_cuda(model_dir: Path, manifest: Manifest, options: EngineOptions, reason: str) -> Engine:
    from millibatch.engines.buckets import BucketPlan
    from millibatch.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    return OnnxRuntimeCudaEngine(
        model_dir / manifest.onnx_file,
        BucketPlan.build(options.max_rows, manifest.max_length),
        instances=options.instances,
        provider="tensorrt" if options.ort_tensorrt_provider else "cuda",
        precision=manifest.precision,
        trt_fp16=options.ort_tensorrt_fp16,
        trt_cache_dir=options.ort_tensorrt_cache_dir,
        cuda_graphs=options.cuda_graphs,
        input_names=tuple(manifest.input_names),
        reason=reason,
    )
