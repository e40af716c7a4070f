"""One instance using every core, or one single-threaded instance per core? Throughput and lone-request
latency of both CPU set-ups, side by side in one run.

    .venv/bin/python bench/cpu_instances.py [--model DIR] [--seconds 6] [--rounds 2]

Throughput: each set-up runs the same mix of batch shapes (what the batcher forms from mixed traffic)
with all its instances busy at once, in alternating rounds. Latency: one row at 16, 128 and 256
tokens on a single instance of each set-up, interleaved. Writes bench/results/cpu_instances.md.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stats import median  # noqa: E402
from bench.timing import interleaved, write_table  # noqa: E402
from millibatch.engines.base import EngineInputs, synthetic_inputs  # noqa: E402
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine, usable_cores  # noqa: E402

#: Batch shapes (rows, tokens) like those the deadline-aware batcher forms from mixed traffic.
MIX = [(3, 14), (2, 20), (4, 12), (1, 160), (3, 30), (1, 256), (2, 17), (2, 90)]
LONE = [16, 128, 256]


def rows_per_second(engine: OnnxRuntimeCpuEngine, batches: list[EngineInputs], seconds: float) -> float:
    """Every instance of `engine` runs the mix in its own thread for `seconds`; total rows/s."""
    done = [0] * engine.info.instances
    start = time.perf_counter()

    def drive(instance: int) -> None:
        while time.perf_counter() - start < seconds:
            for inputs in batches:
                engine.run(inputs, instance)
                done[instance] += inputs.rows

    workers = [threading.Thread(target=drive, args=(i,)) for i in range(engine.info.instances)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--seconds", type=float, default=6.0, help="per set-up per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30, help="lone-request calls per length and set-up")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_instances.md")
    args = parser.parse_args()
    from bench.run import ensure_model

    model = ensure_model(args.model) / "model.onnx"
    cores = usable_cores()
    setups = {
        f"1 instance x {cores} threads": OnnxRuntimeCpuEngine(model, instances=1, threads_per_instance=cores),
        f"{cores} instances x 1 thread": OnnxRuntimeCpuEngine(model, instances=cores, threads_per_instance=1),
    }
    mix = [synthetic_inputs(r, t) for r, t in MIX]
    throughput: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, engine in setups.items():
            throughput[name].append(rows_per_second(engine, mix, args.seconds))
    lone = {tokens: interleaved({name: partial(engine.run, synthetic_inputs(1, tokens), 0)
                                 for name, engine in setups.items()}, args.calls)
            for tokens in LONE}
    write_table(
        args.out,
        f"{cores} cores, {model.parent.name}, `bench/cpu_instances.py` ({args.rounds} rounds of {args.seconds:.0f} s; "
        f"lone requests: median of {args.calls} interleaved calls)",
        ["set-up", "rows/s, mixed batches (median of rounds)", *(f"1×{n} ms" for n in LONE)],
        [[name, f"{median(throughput[name]):.0f}",
          *(f"{median(lone[n][name]) * 1000:.1f}" for n in LONE)] for name in setups],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
