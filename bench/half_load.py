"""Why p99 at half load is many times the latency of a lone call: measured, then simulated without the
server around the scheduler.

    .venv/bin/python -m bench.half_load                 # STS-B sentences, half of the measured peak

1. Against `millibatch serve` (default settings, server on one core, the load generator on the other):
   a lone caller's latency (one call in flight), the peak goodput under a 100 ms deadline (closed loops),
   then Poisson arrivals at half of it, with the server's own histograms (time before the first batch,
   engine time per batch, rows per batch) read around that phase.
2. The same Poisson arrivals (same rate, same texts, so the same token lengths) through the server's
   own `Scheduler`, on a simulated clock, with batches that take exactly what the server's fitted cost
   model says and nothing else: no gRPC, no event loop, no thread hand-offs. What this ideal server's p99
   is, the arrivals and the batching alone cause; the rest is the serving path. Variants isolate the
   parts: one row per batch (no batch growth), two instances, and an M/D/1 reference.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.processes import cores_for, free_port, process_cpu, run_loadgen, serve_launch, start_server, wait_ready
from bench.stats import percentile, publish, stamp
from bench.texts import DEFAULT_STSB, stsb_sentences
from millibatch.batching.cost_model import CostModel
from millibatch.batching.scheduler import BatchLimits, Scheduler
from millibatch.batching.work import Row, WorkItem

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
DEFAULT_OUT = ROOT / "bench" / "results" / "half_load"
DEADLINE = 0.1


# -- the simulated ideal server --------------------------------------------------------------------

class _Pending:
    """A stand-in for a request's future: the scheduler only asks whether it is done."""

    def __init__(self) -> None:
        self.finished = False

    def done(self) -> bool:
        return self.finished


@dataclass(frozen=True)
class Ideal:
    """One simulated set-up."""

    name: str
    instances: int
    limits: BatchLimits


def simulate(ideal: Ideal, arrivals: list[tuple[float, int]], cost: CostModel) -> list[float]:
    """Latencies (s) of each arrival (time, tokens) through `Scheduler` with exact batch times."""
    scheduler = Scheduler(ideal.limits, cost, lambda n: n)
    free = ideal.instances
    events: list[tuple[float, int, str, Any]] = []  # (time, order, kind, payload)
    order = 0
    for at, tokens in arrivals:
        events.append((at, order, "arrive", tokens))
        order += 1
    heapq.heapify(events)
    latencies: list[float] = []
    waiting_until = -1.0
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            item = WorkItem(rows=[Row(ids=[0] * payload, type_ids=[0] * payload)], deadline=now + DEADLINE,  # type: ignore[arg-type]
                            future=_Pending(), enqueued_at=now)  # type: ignore[arg-type]
            scheduler.add(item, now)
        elif kind == "done":
            free += 1
            for item in payload:
                item.future.finished = True
                latencies.append(now - item.enqueued_at)
        while free and scheduler.queued_rows:
            decision = scheduler.next(now)
            for item in decision.shed:  # cannot happen at half load; counted as missed if it does
                item.future.finished = True  # type: ignore[attr-defined]
                latencies.append(float("inf"))
            if decision.batch:
                free -= 1
                finish = now + cost.predict(len(decision.batch), decision.padded_length)
                heapq.heappush(events, (finish, order, "done", [p.item for p in decision.batch]))
                order += 1
            elif decision.wait_until is not None:
                if decision.wait_until > waiting_until:
                    waiting_until = decision.wait_until
                    heapq.heappush(events, (decision.wait_until, order, "wake", None))
                    order += 1
                break
            elif not decision.shed:
                break
    return latencies


def md1_p99(rate: float, service: float) -> float:
    """p99 response time of an M/D/1 queue (Poisson arrivals, constant service), by simulation."""
    rng = random.Random(3)
    at, free_at, times = 0.0, 0.0, []
    for _ in range(200_000):
        at += rng.expovariate(rate)
        start = max(at, free_at)
        free_at = start + service
        times.append(free_at - at)
    return percentile(times, 99)


# -- the measured server ---------------------------------------------------------------------------

def scrape_histograms(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the server's histograms, by metric."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    buckets: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if "_bucket{" not in line:
            continue
        name = line.split("_bucket{", 1)[0]
        le = line.split('le="', 1)[1].split('"', 1)[0]
        buckets.setdefault(name, {})[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile's bucket bound of the observations between two scrapes (Prometheus' view)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    for bound, count in zip(bounds, counts, strict=True):
        if total and count >= q * total:
            return bound
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.half_load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the half-load phase")
    parser.add_argument("--fraction", type=float, default=0.5, help="load as a fraction of the peak")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sentences = stsb_sentences(DEFAULT_STSB)
    texts = raw / "texts-sts.json"
    texts.write_text(json.dumps(sentences), encoding="utf-8")
    cores = cores_for("split")
    port = free_port()
    spec = serve_launch(args.model.resolve(), ["--threads-per-instance", str(len(cores.server)), "--log-level",
                                               "warning"], port=port, metrics=True)
    server = start_server(spec, cores, raw)
    try:
        wait_ready(server, cores, texts, 240)
        run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", "8", "--duration", "3", "--warmup", "0"],
                    None, 120)
        lone = run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", "1", "--duration", "10",
                                                "--warmup", "0", "--timeout", str(DEADLINE)], raw / "lone.json", 120)
        closed = [run_loadgen(spec, cores, texts, ["--mode", "closed", "--concurrency", str(c), "--duration", "8",
                                                   "--warmup", "0", "--timeout", str(DEADLINE)],
                              raw / f"peak-{c}.json", 120) for c in (8, 16, 32)]
        peak = max(float(r["goodput_rps"]) for r in closed if r is not None)
        rate = args.fraction * peak
        assert spec.metrics_url is not None
        before = scrape_histograms(spec.metrics_url)
        cpu_before, wall_before = process_cpu(server.process.pid), time.perf_counter()
        half = run_loadgen(spec, cores, texts, ["--mode", "open", "--rate", f"{rate:.3f}", "--duration",
                                                str(args.duration), "--warmup", "0", "--timeout", str(DEADLINE),
                                                "--seed", "11"], raw / "half.json", args.duration + 120)
        server_cpu = (process_cpu(server.process.pid) - cpu_before) / (time.perf_counter() - wall_before)
        after = scrape_histograms(spec.metrics_url)
        import grpc

        from millibatch.v1 import models_pb2, models_pb2_grpc

        with grpc.insecure_channel(spec.target) as channel:
            info = models_pb2_grpc.ModelsStub(channel).DescribeModel(models_pb2.DescribeModelRequest(), timeout=10)
        coefficients = dict(info.cost_model)
    finally:
        server.stop()
    assert lone is not None and half is not None
    measured = {
        "lone_p50_ms": lone["p50_ms"], "lone_p99_ms": lone["p99_ms"], "peak_goodput": peak, "rate": rate,
        "half_p50_ms": half["p50_ms"], "half_p99_ms": half["p99_ms"], "half_errors": half["errors"],
        "server_cpu_cores": server_cpu,
        "queue_p99_ms": histogram_quantile(before["millibatch_queue_duration_seconds"],
                                           after["millibatch_queue_duration_seconds"], 0.99) * 1e3,
        "engine_batch_p99_ms": histogram_quantile(before["millibatch_inference_duration_seconds"],
                                                  after["millibatch_inference_duration_seconds"], 0.99) * 1e3,
        "server_p99_ms": histogram_quantile(before["millibatch_request_duration_seconds"],
                                            after["millibatch_request_duration_seconds"], 0.99) * 1e3,
        "rows_per_batch_p99": histogram_quantile(before["millibatch_batch_rows"], after["millibatch_batch_rows"],
                                                 0.99),
    }
    # The same kind of arrivals through the scheduler alone, with the server's fitted cost model.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences)]
    rng = random.Random(11)
    at, arrivals = 0.0, []
    while at < 600.0:
        at += rng.expovariate(rate)
        arrivals.append((at, rng.choice(lengths)))
    c0, c1, c2, c3 = (coefficients[k] for k in ("overhead", "per_row", "per_token", "per_token_squared"))
    cost = CostModel((c0, c1, c2, c3))
    limits = BatchLimits()
    ideals = [Ideal("ideal server (this scheduler, exact batch times)", 1, limits),
              Ideal("ideal, one row per batch", 1, replace(limits, max_rows=1)),
              Ideal("ideal, two instances each half as fast", 2, limits)]
    simulated = {}
    for ideal in ideals:
        model = cost if ideal.instances == 1 else CostModel((2 * c0, 2 * c1, 2 * c2, 2 * c3))
        latencies = simulate(ideal, arrivals, model)
        simulated[ideal.name] = {"p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3}
    mean_length = sum(lengths) / len(lengths)
    lone_engine = cost.predict(1, round(mean_length))
    simulated["M/D/1 with the lone call's engine time"] = {"p50_ms": float("nan"),
                                                           "p99_ms": md1_p99(rate, lone_engine) * 1e3}
    when = stamp()
    m = measured
    lines = [f"# p99 at {args.fraction:g}x load against a lone call ({when})", "",
             f"`.venv/bin/python -m bench.half_load {' '.join(argv if argv is not None else sys.argv[1:])}`: STS-B "
             f"sentences, one per call, 100 ms deadline; server on one core, load generator on the other.", "",
             "| measured | ms |", "|---|---|",
             f"| lone call p50 / p99 (one in flight) | {m['lone_p50_ms']:.1f} / {m['lone_p99_ms']:.1f} |",
             f"| {args.fraction:g}x load ({rate:.0f}/s of a {peak:.0f}/s peak) p50 / p99 | "
             f"{m['half_p50_ms']:.1f} / {m['half_p99_ms']:.1f} |",
             f"| server's own p99, arrival to answer (histogram bucket) | ≤ {m['server_p99_ms']:.0f} |",
             f"| p99 wait before the first batch (histogram bucket) | ≤ {m['queue_p99_ms']:.0f} |",
             f"| p99 engine time of one batch (histogram bucket) | ≤ {m['engine_batch_p99_ms']:.0f} |",
             f"| p99 rows per batch | ≤ {m['rows_per_batch_p99']:.0f} |", "",
             f"Simulated: {len(arrivals)} Poisson arrivals at {rate:.0f}/s with STS-B token lengths, batch time from "
             f"the server's fitted cost model ({', '.join(f'{k} {v * 1e6:.1f} µs' for k, v in coefficients.items())}).",
             "", "| simulated | p50 ms | p99 ms |", "|---|---|---|"]
    lines += [f"| {name} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} |" for name, v in simulated.items()]
    publish(args.out, {"measured": measured, "simulated": simulated, "cost_model": coefficients}, lines, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
