"""A synthetic engine whose latency follows a known cost function, and helpers to build work."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from millibatch.batching.cost_model import CostModel
from millibatch.batching.work import Row, WorkItem
from millibatch.engines.base import EngineInfo, EngineInputs, FloatArray, round_up

#: Seconds = OVERHEAD + PER_TOKEN * rows * length (the synthetic engine's true cost).
OVERHEAD = 0.001
PER_TOKEN = 2e-5


def true_cost(rows: int, length: int) -> float:
    return OVERHEAD + PER_TOKEN * rows * length


def exact_cost_model() -> CostModel:
    """A cost model that already knows the synthetic engine's cost."""
    return CostModel((OVERHEAD, 0.0, PER_TOKEN, 0.0))


class SyntheticEngine:
    """Sleeps for true_cost(shape) and returns, per row, the sum and count of its real token ids, so a
    test can check that every caller got its own row back. Records every batch shape it ran."""

    def __init__(self, instances: int = 1, pad_multiple: int = 8, speed: float = 1.0) -> None:
        self._info = EngineInfo("synthetic", "cpu", "fp32", instances, "test")
        self.pad_multiple = pad_multiple
        self.speed = speed
        self.batches: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def output_names(self) -> list[str]:
        return ["checksum"]

    def padded_length(self, length: int) -> int:
        return round_up(length, self.pad_multiple)

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        with self._lock:
            self.batches.append((inputs.rows, inputs.padded_length))
        time.sleep(true_cost(inputs.rows, inputs.padded_length) * self.speed)
        mask = inputs.attention_mask
        checksum = np.stack([(inputs.input_ids * mask).sum(1), mask.sum(1)], axis=1).astype(np.float32)
        return {"checksum": checksum}

    def close(self) -> None:
        pass


def make_row(length: int, seed: int = 0) -> Row:
    ids = np.arange(seed, seed + length, dtype=np.int64) % 1000 + 1
    return Row(ids=ids, type_ids=np.zeros(length, dtype=np.int64))


def expected_checksum(row: Row) -> tuple[float, float]:
    return float(row.ids.sum()), float(row.length)


def make_item(lengths: list[int], deadline: float, enqueued_at: float = 0.0) -> WorkItem:
    """A work item outside any running loop (for scheduler tests)."""
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[list[object]] = loop.create_future()
    finally:
        loop.close()
    return WorkItem(rows=[make_row(n, i) for i, n in enumerate(lengths)], deadline=deadline,
                    future=future, enqueued_at=enqueued_at)  # type: ignore[arg-type]
