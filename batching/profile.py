"""Warm-up profile: time the engine on a grid of batch shapes to seed the cost model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

from millibatch.batching.cost_model import Observation
from millibatch.batching.scheduler import BatchLimits
from millibatch.engines.base import Engine, synthetic_inputs

PROFILE_LENGTHS = (8, 32, 128, 256, 512)
PROFILE_ROWS = (1, 4, 16, 64)


def profile_shapes(limits: BatchLimits, max_length: int, engine: Engine) -> list[tuple[int, int]]:
    """(rows, padded length) pairs within the budgets, smallest first."""
    lengths = sorted({engine.padded_length(min(n, max_length)) for n in PROFILE_LENGTHS})
    rows = sorted({min(r, limits.max_rows) for r in PROFILE_ROWS})
    shapes = [(r, n) for n in lengths for r in rows if r * n <= limits.max_tokens]
    return sorted(shapes, key=lambda shape: shape[0] * shape[1])


def measure(
    engine: Engine, shapes: Iterable[tuple[int, int]], repeats: int = 3, budget_seconds: float = 4.0
) -> list[Observation]:
    """Median wall time per shape on instance 0, after one untimed run (which also warms the engine).
    Shapes come smallest first; once `budget_seconds` are spent the rest are left to online refits."""
    observations = []
    started = time.perf_counter()
    for rows, length in shapes:
        if time.perf_counter() - started > budget_seconds:
            break
        inputs = synthetic_inputs(rows, length)
        engine.run(inputs, 0)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.run(inputs, 0)
            times.append(time.perf_counter() - start)
        observations.append(Observation(rows, length, statistics.median(times)))
    return observations
