"""convert's built-in quick benchmark: a variant timed beside the plain fp32 graph and PyTorch.

Every candidate runs the same synthetic batch in turn (A, B, C, A, B, C, ...), so a machine that
slows down mid-run slows all of them alike; the table reports medians and the ratio to fp32. It runs
on ONNX Runtime's CPU provider with the threads one server instance gets by default, which is how
the variant will be served on this machine (GPU variants: bench/gpu.py).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from millibatch.engines.base import EngineInputs, synthetic_inputs

Key = TypeVar("Key", bound=Hashable)

#: (rows, tokens): a lone short query, a lone paragraph, a full batch of paragraphs.
SHAPES: tuple[tuple[int, int], ...] = ((1, 16), (1, 128), (32, 128))
#: The candidate every ratio is against: the exported graph, unfused, fp32.
BASELINE = "fp32"


def interleaved(runs: Mapping[Key, Callable[[], object]], calls: int) -> dict[Key, list[float]]:
    """Seconds per call of each candidate: one untimed call each, then `calls` rounds that run every
    candidate in turn (A, B, C, A, B, C, ...), so a busy machine slows all of them alike."""
    for run in runs.values():
        run()
    times: dict[Key, list[float]] = {key: [] for key in runs}
    for _ in range(calls):
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - started)
    return times


def machine() -> str:
    """The CPU's model name and the cores this process may use, for the record beside the numbers."""
    from millibatch.engines.convert.quantize import cpuinfo_value
    from millibatch.engines.onnxruntime_engine import usable_cores

    name = cpuinfo_value("model name") or platform.processor() or platform.machine()
    return f"{name}, {usable_cores()} usable cores"


def rounds_for(round_seconds: float, budget_seconds: float, least: int = 3, most: int = 200) -> int:
    """Timed rounds that fit `budget_seconds` when one round takes `round_seconds` (within least..most)."""
    return max(least, min(most, int(budget_seconds / max(round_seconds, 1e-6))))


def run(
    candidates: Mapping[str, Callable[[EngineInputs], object]],
    *,
    max_length: int,
    threads: int,
    seconds_per_shape: float = 5.0,
    shapes: Sequence[tuple[int, int]] = SHAPES,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Median milliseconds per call of every candidate at every shape (tokens capped at `max_length`),
    with what a reader needs to judge them: when, on what, how many rounds."""
    medians: dict[str, dict[str, float]] = {}
    rounds: dict[str, int] = {}
    for rows, tokens in shapes:
        tokens = min(tokens, max_length)
        key = f"{rows}x{tokens}"
        if key in medians:
            continue
        batch = synthetic_inputs(rows, tokens)
        calls = {name: partial(call, batch) for name, call in candidates.items()}
        started = time.perf_counter()
        for call in calls.values():  # warm-up round, which also sizes the timed ones
            call()
        rounds[key] = rounds_for(time.perf_counter() - started, seconds_per_shape)
        progress(f"timing {key}: {len(calls)} candidates x {rounds[key]} rounds")
        times = interleaved(calls, rounds[key])
        medians[key] = {name: round(statistics.median(t) * 1000, 3) for name, t in times.items()}
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "device": "cpu",
        "threads": threads,
        "rounds": rounds,
        "median_ms": medians,
    }


def table(result: Mapping[str, Any]) -> str:
    """The benchmark as a markdown table: median ms and speed relative to fp32, one row per candidate."""
    medians: Mapping[str, Mapping[str, float]] = result["median_ms"]
    shapes = list(medians)
    names = list(next(iter(medians.values()))) if medians else []
    lines = [
        f"quick benchmark, {result['when']}, {result['machine']}, {result['device']}, "
        f"{result['threads']} thread(s) per session; median ms per call (speed vs {BASELINE})",
        "",
        "| variant | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for name in names:
        cells = []
        for shape in shapes:
            ms = medians[shape][name]
            base = medians[shape].get(BASELINE)
            cells.append(f"{ms:.2f} ({base / ms:.2f}×)" if base else f"{ms:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
