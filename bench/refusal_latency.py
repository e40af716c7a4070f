"""How fast an overloaded server says no: RESOURCE_EXHAUSTED latency seen by a client in its own process.

    .venv/bin/python bench/refusal_latency.py [--rate 600] [--queue-rows 16] [--duration 10]

Serves all-MiniLM-L6-v2 with a small admission queue and sends open-loop Poisson traffic far above
capacity from the load generator (bench/loadgen.py, a separate process), each call with a 1 s
deadline so that refusals come from admission rather than shedding. Prints the latency of refused
and of answered calls and writes bench/results/refusal_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.deadline_batching import POLICIES, millibatch_server, run_load, workload  # noqa: E402
from bench.processes import running_server  # noqa: E402
from bench.stats import summarize  # noqa: E402
from bench.timing import write_table  # noqa: E402


def main() -> int:
    """Overload one server and write the latency of each status to --out."""
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
    spec = millibatch_server(model, [*POLICIES["deadline-aware"], "--max-queue-rows", str(args.queue_rows)],
                             port=args.port)
    with running_server(spec, texts_file) as server:
        result = run_load(server, texts_file, scratch / "load.json", "open", args.duration, 1.0, rate=args.rate,
                          records=scratch / "calls.json")
    # Each call's time from sending to its answer or refusal: [status, ms].
    calls: list[tuple[str, float]] = json.loads((scratch / "calls.json").read_text(encoding="utf-8"))
    by_code: dict[str, list[float]] = {}
    for code, ms in calls:
        by_code.setdefault(code, []).append(ms)
    rows = []
    for code, values in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
        summary = summarize(values)
        rows.append([code, summary.count, f"{summary.p50:.1f}", f"{summary.p99:.1f}", f"{summary.max:.1f}"])
    write_table(args.out, f"{os.cpu_count()} cores: open loop at {args.rate:.0f} calls/s for {args.duration:.0f} s, "
                f"admission queue {args.queue_rows} rows, 1 s deadlines, client in its own process "
                f"(`bench/refusal_latency.py`). Client CPU {result['client_cpu_cores']:.2f} of a core.",
                ["status", "calls", "p50 ms", "p99 ms", "max ms"], rows)
    print(f"(also {summarize([ms for _, ms in calls]).mean:.1f} ms mean over all calls)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
