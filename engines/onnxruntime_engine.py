"""ONNX Runtime engine on CPU: N sessions, each pinned to its share of the cores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from millibatch.engines.base import EngineInfo, EngineInputs, FloatArray, SpinningChoice, round_up
from millibatch.engines.thread_priority import EnginePriority, made_below_loop

#: Most instances `auto` starts on CPU; beyond it the cores go to threads within each instance.
MAX_AUTO_INSTANCES = 4


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers' cpusets narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_instances() -> int:
    """Instances for `instances = 0`: one per core, up to MAX_AUTO_INSTANCES.

    Under load, single-threaded sessions running side by side get more rows per second out of the
    cores than one session spreading each (small) batch over them: ONNX Runtime's intra-op threads
    spend much of a short batch waking and waiting for each other (2 cores: +30% rows/s on mixed
    batches, bench/cpu_instances.py). The price is the latency of a lone input, which one thread runs
    about 1.3-1.8x slower than two; `instances = 1` keeps that latency for lightly loaded servers.
    """
    return max(1, min(usable_cores(), MAX_AUTO_INSTANCES))


def default_threads_per_instance(instances: int) -> int:
    """Split the usable cores evenly between instances (at least one thread each)."""
    return max(1, usable_cores() // max(1, instances))


#: ONNX Runtime graph rewrites left out on CPU. SkipLayerNormFusion turns a residual Add plus
#: LayerNormalization into SkipLayerNormalization, whose CPU kernel is slower than the two ops it
#: replaces (convert leaves it out of CPU graphs for the same reason). ONNX Runtime applies it at
#: load to int8 graphs, where it cost int8 much of its lead: bench/convert_variants.py times int8
#: with and without it side by side ("int8+ort-skipln").
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def spins(choice: SpinningChoice, instances: int, threads: int) -> bool:
    """Whether intra-op threads should spin: `auto` lets them when an instance has threads to spin
    (more than one) and every instance's threads fit the usable cores, so no spinning thread takes a
    core another instance is computing on."""
    if choice != "auto":
        return choice in ("on", "always")
    return threads > 1 and instances * threads <= usable_cores()


def cpu_session(
    onnx_path: Path,
    threads: int,
    *,
    spinning: bool = False,
    keep_spinning: bool = False,
    disabled_optimizers: Sequence[str] = CPU_DISABLED_OPTIMIZERS,
    optimized_copy: Path | None = None,
) -> Any:
    """One CPU InferenceSession as the engine runs it: `threads` intra-op threads, every graph
    optimisation but `disabled_optimizers`. `optimized_copy` saves the graph as optimised at load (to
    see which rewrites fired).

    With `spinning`, the intra-op threads spin-wait for work while a batch runs and stop as soon as it
    returns (`session.force_spinning_stop`): a multi-threaded batch of one short text runs as fast as
    with ONNX Runtime's default (which keeps spinning between batches too), for the CPU time of not
    spinning at all, since between batches the event loop and the tokenizer need those cores. Without
    it the threads sleep between the operators of a batch, about a third slower for short inputs
    (bench/call_path.py). With `keep_spinning` too, they spin on after each batch as well (ONNX Runtime's
    default), so that the next batch finds them awake."""
    import onnxruntime as ort

    options = session_options(threads, spinning=spinning, keep_spinning=keep_spinning)
    if optimized_copy is not None:
        options.optimized_model_filepath = str(optimized_copy)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def session_options(threads: int, *, spinning: bool, keep_spinning: bool = False) -> Any:
    """cpu_session's SessionOptions: `threads` intra-op threads, sequential, every graph optimisation, and
    spinning as cpu_session says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning and not keep_spinning:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


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
        pad_multiple: int = 1,
        spinning: SpinningChoice = "auto",
        priority: EnginePriority | None = None,
    ) -> None:
        threads = threads_per_instance or default_threads_per_instance(instances)
        spin = spins(spinning, instances, threads)
        # Each session's intra-op threads start with it. Under SCHED_IDLE they must share the instance
        # thread's policy (a normal-priority helper spinning beside it starves it); niced, they are left
        # at the loader's priority, which measured faster (docs/OVERLOAD.md).
        below = priority if priority == "idle" else None
        self._sessions = [made_below_loop(below, lambda: cpu_session(onnx_path, threads, spinning=spin,
                                                                     keep_spinning=spinning == "always"))
                          for _ in range(instances)]
        first = self._sessions[0]
        self._input_names = [i.name for i in first.get_inputs()]
        self._output_names = [o.name for o in first.get_outputs()]
        # On CPU a batch costs in proportion to its tokens (8 x 57 takes 0.89x of 8 x 64, see
        # bench/cpu_padding.py): rounding lengths up is pure waste here, unlike on GPU tensor cores.
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
