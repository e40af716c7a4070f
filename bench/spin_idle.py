"""An engine run after idle: ONNX Runtime threads that stop spinning after each batch, or keep spinning.

    .venv/bin/python -m bench.spin_idle                       # gaps of 0, 5, 20 and 100 ms, two rounds
    .venv/bin/python -m bench.spin_idle --gaps-ms 20 --runs 60

One session per `cpu_spinning` choice, as the engine builds them (`auto` on a multi-threaded instance:
spinning during a batch, stopped at its end; `always`: ONNX Runtime's own default, spinning on after it),
each running one 16-token row after sleeping GAP ms, alternately, round by round. For each: the run's p50
and the process's CPU over the whole stretch, sleeps included: what the threads burn while waiting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.stats import publish, stamp
from millibatch.engines.base import synthetic_inputs
from millibatch.engines.onnxruntime_engine import cpu_session

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "spin_idle"
TOKENS = 16


def feeds(session: Any) -> dict[str, Any]:
    """One row of TOKENS tokens, fed by input name as the engine feeds a batch."""
    inputs = synthetic_inputs(1, TOKENS)
    return {i.name: getattr(inputs, i.name) for i in session.get_inputs()}


def measure(session: Any, feed: dict[str, Any], gap: float, runs: int) -> tuple[float, float]:
    """p50 seconds of a run after sleeping `gap`, and the process's CPU in cores over the stretch."""
    times = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        time.sleep(gap)
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times), (time.process_time() - cpu) / (time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.spin_idle", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of each session")
    parser.add_argument("--gaps-ms", type=float, nargs="+", default=[0.0, 5.0, 20.0, 100.0])
    parser.add_argument("--runs", type=int, default=40, help="runs per choice, gap and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    manifest = json.loads((args.model / "manifest.json").read_text(encoding="utf-8"))
    onnx = args.model / manifest.get("onnx_file", "model.onnx")
    sessions = {"auto": cpu_session(onnx, args.threads, spinning=True),
                "always": cpu_session(onnx, args.threads, spinning=True, keep_spinning=True)}
    feed = feeds(sessions["auto"])
    for session in sessions.values():
        session.run(None, feed)
    when = stamp()
    results: list[dict[str, Any]] = []
    for gap_ms in args.gaps_ms:
        for round_number in range(1, args.rounds + 1):
            for choice, session in sessions.items():
                p50, cores = measure(session, feed, gap_ms / 1e3, args.runs)
                results.append({"gap_ms": gap_ms, "round": round_number, "choice": choice,
                                "p50_ms": p50 * 1e3, "process_cores": cores})
                print(f"gap {gap_ms:5.0f} ms  round {round_number}  {choice:6}  p50 {p50 * 1e3:6.2f} ms  "
                      f"process CPU {cores:.2f} cores", flush=True)
    lines = [f"# An engine run after idle ({when})", "",
             f"`.venv/bin/python -m bench.spin_idle --threads {args.threads} --runs {args.runs} --rounds "
             f"{args.rounds} --gaps-ms {' '.join(f'{g:g}' for g in args.gaps_ms)}`: one {TOKENS}-token row per run "
             f"on a {args.threads}-thread session, after sleeping the gap; `auto` stops its threads spinning at "
             "the end of each run, `always` lets them spin on (ONNX Runtime's default).", "",
             "| gap ms | round | auto p50 ms | always p50 ms | auto CPU, cores | always CPU, cores |",
             "|---|---|---|---|---|---|"]
    for gap_ms in args.gaps_ms:
        for round_number in range(1, args.rounds + 1):
            row = {r["choice"]: r for r in results if r["gap_ms"] == gap_ms and r["round"] == round_number}
            lines.append(f"| {gap_ms:g} | {round_number} | {row['auto']['p50_ms']:.2f} | {row['always']['p50_ms']:.2f} "
                         f"| {row['auto']['process_cores']:.2f} | {row['always']['process_cores']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    publish(args.out, {"threads": args.threads, "runs": args.runs, "results": results}, lines, when)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
