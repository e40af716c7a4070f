"""Fault injection: a real engine wrapped so that its calls raise, hang, slow down or return bad shapes."""

from __future__ import annotations

import threading
import time
from typing import Any

from millibatch.engines.base import Engine, EngineInputs


class FaultyEngine:
    """Delegates to a real engine; `mode` picks the fault for the next calls (None = behave)."""

    def __init__(self, inner: Engine, mode: str | None = None, delay: float = 0.0) -> None:
        self.inner = inner
        self.info = inner.info
        self.output_names = inner.output_names
        self.mode = mode
        self.delay = delay
        self.release = threading.Event()
        self.calls = 0
        self.rows = 0

    def padded_length(self, n: int) -> int:
        return self.inner.padded_length(n)

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, Any]:
        self.calls += 1
        self.rows += inputs.input_ids.shape[0]
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "raise":
            raise RuntimeError("CUDA error 700 at /opt/secret/kernel.cu:42")
        if self.mode == "hang":
            self.release.wait(60)
        outputs = self.inner.run(inputs, instance)
        if self.mode == "short":
            return {name: value[:-1] for name, value in outputs.items()}
        if self.mode == "missing":
            return {}
        return outputs

    def close(self) -> None:
        self.inner.close()
