"""ONNX Runtime engine on CPU: N sessions, each pinned to its share of the cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.base import EngineInfo, EngineInputs, FloatArray, round_up


def default_threads_per_instance(instances: int) -> int:
    """Split the usable cores evenly between instances (at least one thread each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, instances))


class OnnxRuntimeCpuEngine:
    """Runs an ONNX graph with ONNX Runtime's CPU provider; one InferenceSession per instance."""

    def __init__(
        self,
        onnx_path: Path,
        *,
        instances: int = 1,
        threads_per_instance: int = 0,
        precision: str = "fp32",
        reason: str = "requested",
        pad_multiple: int = 8,
    ) -> None:
        import onnxruntime as ort

        threads = threads_per_instance or default_threads_per_instance(instances)
        self._sessions = []
        for _ in range(instances):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Spinning threads burn the cores the event loop and tokenizer need between batches.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions.append(
                ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
            )
        first = self._sessions[0]
        self._input_names = [i.name for i in first.get_inputs()]
        self._output_names = [o.name for o in first.get_outputs()]
        self._pad_multiple = pad_multiple
        self._info = EngineInfo(
            engine="onnxruntime", device="cpu", precision=precision, instances=instances, reason=reason
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def padded_length(self, length: int) -> int:
        return round_up(length, self._pad_multiple)

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        feeds = {name: getattr(inputs, name) for name in self._input_names}
        outputs = self._sessions[instance].run(self._output_names, feeds)
        return {name: np.asarray(value) for name, value in zip(self._output_names, outputs, strict=True)}

    def close(self) -> None:
        self._sessions.clear()
