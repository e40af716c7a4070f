"""The engine interface every backend implements (ONNX Runtime CPU/CUDA, TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
#: When ONNX Runtime's CPU intra-op threads spin-wait (engines.onnxruntime_engine.spins); `always` is ONNX
#: Runtime's own default: the threads also spin on for a while after each batch.
SpinningChoice = Literal["auto", "on", "off", "always"]


@dataclass(frozen=True)
class EngineInputs:
    """One padded batch, all arrays shaped [rows, padded_length]."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_length(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass(frozen=True)
class EngineInfo:
    """How a model is being run, for logs and the Models service."""

    #: Backend name: "onnxruntime" or "tensorrt".
    engine: str
    #: "cpu" or "cuda".
    device: str
    #: Numeric precision of the artefact run.
    precision: str
    #: Concurrent instances (sessions or execution contexts).
    instances: int
    #: Why this engine/device was chosen (engine="auto" explains itself here).
    reason: str


class Engine(Protocol):
    """Runs padded batches. `run` is blocking and thread-safe across distinct `instance` values.

    An engine with per-thread state may also have `prepare_thread(instance)`: the batcher calls it on
    the thread that will run `instance`, one thread at a time, before any batch (ONNX Runtime's CUDA
    graphs; batching/workers.py)."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def output_names(self) -> list[str]: ...

    def padded_length(self, length: int) -> int:
        """The sequence length a batch whose longest row is `length` tokens is padded to."""
        ...

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        """Compute one batch on instance `instance` (0 <= instance < info.instances)."""
        ...

    def close(self) -> None:
        """Release sessions and device memory."""
        ...


def round_up(length: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= length (length >= 1)."""
    return -(-length // multiple) * multiple


def synthetic_inputs(rows: int, length: int) -> EngineInputs:
    """A batch of token ids in the ordinary vocabulary range, for timing: the content does not change it."""
    rng = np.random.default_rng(rows * 100_003 + length)
    ids = rng.integers(1000, 2000, size=(rows, length), dtype=np.int64)
    return EngineInputs(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))
