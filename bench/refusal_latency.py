"""How fast an overloaded server says no: RESOURCE_EXHAUSTED latency seen by a client in its own process.

    .venv/bin/python bench/refusal_latency.py [--rate 600] [--queue-rows 16] [--duration 10]

Serves all-MiniLM-L6-v2 with a small admission queue and sends open-loop Poisson traffic far above
capacity from the deadline_batching load generator (a separate process), each call with a 1 s
deadline so that refusals come from admission rather than shedding. Prints the latency of refused
and of answered calls and writes bench/results/refusal_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.deadline_batching import POLICIES, Server, percentile_ms, run_load, workload  # noqa: E402
from bench.timing import write_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--rate", type=float, default=600.0, help="offered calls per second")
    parser.add_argument("--queue-rows", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=50161)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "refusal_latency.md")
    args = parser.parse_args()
    from bench.run import ensure_model

    model = ensure_model(args.model)
    scratch = REPO / "build" / "refusal_latency"
    scratch.mkdir(parents=True, exist_ok=True)
    texts_file = scratch / "texts.json"
    texts_file.write_text(json.dumps(workload()))
    server = Server(model, args.port, [*POLICIES["deadline-aware"], "--max-queue-rows", str(args.queue_rows)])
    try:
        result = run_load(args.port, texts_file, scratch / "load.json", mode="open", rate=args.rate,
                          duration=args.duration, timeout=1.0)
    finally:
        server.stop()
    records = result["records"]
    assert isinstance(records, list)
    by_code: dict[str, list[float]] = {}
    for seconds, code in records:
        by_code.setdefault(code, []).append(seconds)
    rows = []
    for code, values in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
        values.sort()
        rows.append([code, len(values), f"{percentile_ms(values, 0.5):.1f}", f"{percentile_ms(values, 0.99):.1f}",
                     f"{1000 * values[-1]:.1f}"])
    write_table(args.out, f"{os.cpu_count()} cores: open loop at {args.rate:.0f} calls/s for {args.duration:.0f} s, "
                f"admission queue {args.queue_rows} rows, 1 s deadlines, client in its own process "
                f"(`bench/refusal_latency.py`). Client CPU {result['client_cpu']:.2f} of a core.",
                ["status", "calls", "p50 ms", "p99 ms", "max ms"], rows)
    print(f"(also {statistics.mean(s for s, _ in records) * 1000:.1f} ms mean over all calls)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
