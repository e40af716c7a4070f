"""Fault injection: a real engine wrapped so that its calls raise, hang, slow down or return bad shapes."""

from __future__ import annotations

import threading
import time
from typing import Any

from millibatch.batching.batcher import Batcher
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


def install(batcher: Batcher, mode: str | None = None, delay: float = 0.0) -> FaultyEngine:
    """Wrap `batcher`'s engine in a FaultyEngine. Its calls then all run on the engine threads, where a
    hang or a slow call is watched and never holds the event loop: a lone call at an idle model would
    otherwise run on the loop itself (`inline_max_ms`), predicted fast by the real engine's cost model."""
    faulty = FaultyEngine(batcher.engine, mode, delay)
    batcher.engine = faulty
    batcher.inline_seconds = 0.0
    return faulty
