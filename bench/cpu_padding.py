"""Does rounding sequence lengths up to a multiple of 8 pay on CPU? Times batches at a length and at
that length rounded up, interleaved in one run, and compares the time ratio with the token ratio.

    .venv/bin/python bench/cpu_padding.py [--model DIR] [--calls 40]

If time grows with tokens (time ratio ≈ token ratio), padding is pure waste on this engine and the
CPU engine should pad to the batch's longest row only (its default). GPU engines keep multiples of 8
and shape buckets, where tensor cores and prebuilt profiles want them.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stats import median  # noqa: E402
from bench.timing import interleaved, write_table  # noqa: E402
from millibatch.engines.base import round_up, synthetic_inputs  # noqa: E402
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine, usable_cores  # noqa: E402

SHAPES = [(1, 9), (4, 13), (8, 57), (2, 121), (16, 25)]


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
    runs = {(rows, n): partial(engine.run, synthetic_inputs(rows, n), 0)
            for rows, length, padded in cases for n in (length, padded)}
    times = interleaved(runs, args.calls)
    table = []
    for rows, length, padded in cases:
        exact, rounded = (median(times[(rows, n)]) * 1000 for n in (length, padded))
        table.append([rows, length, padded, f"{exact:.2f}", f"{rounded:.2f}", f"{rounded / exact:.3f}",
                      f"{padded / length:.3f}"])
    write_table(args.out, f"{usable_cores()} cores, {model.name}, one session with all cores, median of "
                f"{args.calls} interleaved calls (`bench/cpu_padding.py`)",
                ["rows", "length", "padded to 8", "ms at length", "ms padded", "time ratio", "token ratio"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
