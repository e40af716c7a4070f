"""Choose and load an engine for a model directory: `engine` and `device` names, plus `auto`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines.base import Engine
from engines.model_dir import Manifest

EngineName = Literal["auto", "onnxruntime", "tensorrt"]
DeviceName = Literal["auto", "cpu", "cuda"]


class EngineUnavailable(RuntimeError):
    """The requested engine or device cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model: which backend, on what device, how many instances."""

    engine: EngineName = "auto"
    device: DeviceName = "auto"
    instances: int = 1
    threads_per_instance: int = 0


def onnxruntime_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def load_engine(model_dir: Path, manifest: Manifest, options: EngineOptions) -> Engine:
    """Load the engine `options` ask for, or with `auto` the fastest this machine can run."""
    if options.engine == "tensorrt":
        raise EngineUnavailable(
            "engine 'tensorrt' needs the tensorrt package and a CUDA GPU; neither is available here"
        )
    if options.device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime_providers():
            raise EngineUnavailable(
                "device 'cuda' needs onnxruntime-gpu and a visible CUDA GPU; "
                f"this onnxruntime offers {onnxruntime_providers()}"
            )
        raise EngineUnavailable("device 'cuda' is not supported by this build of millibatch yet")
    from engines.onnxruntime_engine import OnnxRuntimeCpuEngine

    reason = (
        "requested onnxruntime on cpu"
        if options.engine == "onnxruntime" and options.device == "cpu"
        else "auto: no CUDA GPU visible, so ONNX Runtime on CPU"
    )
    return OnnxRuntimeCpuEngine(
        model_dir / manifest.onnx_file,
        instances=options.instances,
        threads_per_instance=options.threads_per_instance,
        precision=manifest.precision,
        reason=reason,
    )
