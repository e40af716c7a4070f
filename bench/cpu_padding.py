"""Does rounding sequence lengths up to a multiple of 8 pay on CPU? Times batches at a length and at
that length rounded up, interleaved in one run, and compares the time ratio with the token ratio.

    .venv/bin/python bench/cpu_padding.py [--model DIR] [--calls 40]

If time grows with tokens (time ratio ≈ token ratio), padding is pure waste on this engine and the
CPU engine should pad to the batch's longest row only (its default). GPU engines keep multiples of 8
and shape buckets, where tensor cores and prebuilt profiles want them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.base import EngineInputs, round_up  # noqa: E402
from engines.onnxruntime_engine import OnnxRuntimeCpuEngine, usable_cores  # noqa: E402

SHAPES = [(1, 9), (4, 13), (8, 57), (2, 121), (16, 25)]


def batch(rows: int, tokens: int) -> EngineInputs:
    ids = np.random.default_rng(tokens).integers(2000, 20000, size=(rows, tokens), dtype=np.int64)
    return EngineInputs(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_padding.md")
    args = parser.parse_args()
    from bench.run import ensure_model

    model = ensure_model(args.model)
    engine = OnnxRuntimeCpuEngine(model / "model.onnx")
    cases = [(rows, length, round_up(length, 8)) for rows, length in SHAPES]
    inputs = {(rows, n): batch(rows, n) for rows, length, padded in cases for n in (length, padded)}
    times: dict[tuple[int, int], list[float]] = {key: [] for key in inputs}
    for value in inputs.values():
        engine.run(value, 0)  # warm-up
    for _ in range(args.calls):
        for key, value in inputs.items():
            started = time.perf_counter()
            engine.run(value, 0)
            times[key].append(time.perf_counter() - started)
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {usable_cores()} cores, {model.name}, "
        f"one session with all cores, median of {args.calls} interleaved calls (`bench/cpu_padding.py`)",
        "",
        "| rows | length | padded to 8 | ms at length | ms padded | time ratio | token ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows, length, padded in cases:
        exact, rounded = (statistics.median(times[(rows, n)]) * 1000 for n in (length, padded))
        lines.append(f"| {rows} | {length} | {padded} | {exact:.2f} | {rounded:.2f} | {rounded / exact:.3f} | "
                     f"{padded / length:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
