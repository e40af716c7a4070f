"""Served int8 against served fp32, beside the engines' own ratio at the batches the server formed.

    .venv/bin/python -m bench.precision_served                  # long texts (~100 tokens), 32 in flight

Each model directory is served in turn (`millibatch serve`, one core; the load generator on the other;
fp32 first in odd rounds, int8 first in even ones)
under a closed loop of `--concurrency` calls; the server's metrics give its throughput and the mean
shape of the batches it formed. Then the engines alone run batches of those shapes in this process,
on the same core, interleaved call by call. If serving costs nothing per call, served int8 / fp32 equals
the engines' int8 / fp32; every microsecond the front end spends per call pulls the served ratio
towards 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.processes import cores_for, run_loadgen, serve_launch, start_server, wait_ready
from bench.stats import publish, stamp
from bench.texts import DEFAULT_STSB, TEXT_SETS, stsb_sentences, text_set
from millibatch.engines.base import synthetic_inputs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "precision_served"


def batch_shape(url: str) -> tuple[float, float, float]:
    """(batches, rows, padded tokens) counted by the server so far."""
    totals = {"millibatch_batch_rows_count": 0.0, "millibatch_batch_rows_sum": 0.0,
              "millibatch_batch_padded_tokens_sum": 0.0}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            name = line.split("{", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return (totals["millibatch_batch_rows_count"], totals["millibatch_batch_rows_sum"],
            totals["millibatch_batch_padded_tokens_sum"])


def served(model: Path, texts: Path, concurrency: int, duration: float, raw: Path) -> dict[str, Any]:
    """Closed-loop throughput of `model` served on one core, and the mean batch it formed."""
    cores = cores_for("split")
    spec = serve_launch(model, ["--threads-per-instance", str(len(cores.server)), "--log-level", "warning"],
                        metrics=True)
    server = start_server(spec, cores, raw)
    try:
        wait_ready(server, cores, texts, 240)
        flags = ["--mode", "closed", "--concurrency", str(concurrency), "--timeout", "30", "--warmup", "0"]
        run_loadgen(spec, cores, texts, [*flags, "--duration", "3"], None, 120)
        assert spec.metrics_url is not None
        before = batch_shape(spec.metrics_url)
        result = run_loadgen(spec, cores, texts, [*flags, "--duration", str(duration)], raw / f"{model.name}.json",
                             duration + 120)
        after = batch_shape(spec.metrics_url)
    finally:
        server.stop()
    assert result is not None
    batches, rows, tokens = (a - b for a, b in zip(after, before, strict=True))
    return {"rows_per_s": result["throughput_rps"], "errors": result["errors"], "mean_rows": rows / batches,
            "mean_length": tokens / rows, "client_cpu_cores": result["client_cpu_cores"]}


def engine_rows_per_s(models: dict[str, Path], rows: int, length: int, seconds: float) -> dict[str, float]:
    """Rows/s of each model's engine alone (one thread, as one served instance here) on batches of
    `rows` x `length`, interleaved call by call, on the server's core."""
    from millibatch.engines.model_dir import Manifest
    from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine

    os.sched_setaffinity(0, cores_for("split").server)
    engines = {name: OnnxRuntimeCpuEngine(path / Manifest.load(path).onnx_file, threads_per_instance=1)
               for name, path in models.items()}
    inputs = synthetic_inputs(rows, length)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.run(inputs, 0)
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.run(inputs, 0)
            times[name].append(time.perf_counter() - started)
    return {name: rows / statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.precision_served", description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--int8", type=Path, default=ROOT / "models" / "minilm-int8")
    parser.add_argument("--texts", choices=TEXT_SETS, default="long")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    texts = raw / f"texts-{args.texts}.json"
    texts.write_text(json.dumps(text_set(args.texts, stsb_sentences(DEFAULT_STSB))), encoding="utf-8")
    models = {"fp32": args.fp32.resolve(), "int8": args.int8.resolve()}
    rounds = []
    for round_ in range(1, args.rounds + 1):
        # fp32 first in odd rounds, int8 first in even ones: this machine's drift within a round then
        # favours each model in turn instead of always the same one.
        order = list(models.items()) if round_ % 2 else list(reversed(models.items()))
        measured = {name: served(path, texts, args.concurrency, args.duration, raw) for name, path in order}
        rows = round(statistics.mean(m["mean_rows"] for m in measured.values()))
        length = round(statistics.mean(m["mean_length"] for m in measured.values()))
        engines = engine_rows_per_s(models, max(1, rows), length, 10.0)
        served_ratio = measured["int8"]["rows_per_s"] / measured["fp32"]["rows_per_s"]
        engine_ratio = engines["int8"] / engines["fp32"]
        rounds.append({"round": round_, "served": measured, "engine_rows_per_s": engines, "batch": [rows, length],
                       "served_ratio": served_ratio, "engine_ratio": engine_ratio,
                       "served_of_engine": served_ratio / engine_ratio})
        print(f"round {round_}: served fp32 {measured['fp32']['rows_per_s']:.1f}/s, int8 "
              f"{measured['int8']['rows_per_s']:.1f}/s ({served_ratio:.2f}x); engines at {rows} x {length}: "
              f"fp32 {engines['fp32']:.1f}/s, int8 {engines['int8']:.1f}/s ({engine_ratio:.2f}x); served ratio = "
              f"{served_ratio / engine_ratio:.2f} of the engines'", flush=True)
    when = stamp()
    lines = [f"# Served int8 against served fp32 ({when})", "",
             f"`.venv/bin/python -m bench.precision_served {' '.join(argv if argv is not None else sys.argv[1:])}`: "
             f"{args.texts} texts, {args.concurrency} calls in flight, server on one core, the load generator on the "
             "other; engines alone on the same core at the mean batch the servers formed.", "",
             "| round | served fp32 rows/s | served int8 rows/s | served int8/fp32 | batch (rows x tokens) | "
             "engine int8/fp32 | served ratio / engine ratio |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        s = r["served"]
        lines.append(f"| {r['round']} | {s['fp32']['rows_per_s']:.1f} | {s['int8']['rows_per_s']:.1f} | "
                     f"{r['served_ratio']:.2f} | {r['batch'][0]} x {r['batch'][1]} | {r['engine_ratio']:.2f} | "
                     f"{r['served_of_engine']:.2f} |")
    publish(args.out, {"rounds": rounds}, lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
