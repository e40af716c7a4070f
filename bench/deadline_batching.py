"""Deadline-aware batching vs no batching vs fixed-delay FIFO batching, in one run.

Open-loop Poisson arrivals of STS-B sentences (and longer joined texts) with a per-request deadline,
at multiples of the measured capacity. Reports goodput (answers within deadline per second),
p50/p99 latency, shed/rejected counts and padding ratio, plus the served saturation throughput
against the raw engine's in-process throughput at the same batch shapes.

    .venv/bin/python bench/deadline_batching.py --duration 15      # ~8 minutes on 2 cores

The load generator (bench/loadgen.py) runs in its own process and reports its CPU use, so a saturated
client shows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import shlex
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.processes import Launch, Server, run_loadgen, running_server, serve_launch  # noqa: E402

POLICIES = {
    # name: server flags
    "no batching": ["--batch-policy", "fifo", "--max-batch-rows", "1", "--max-delay-ms", "0"],
    "fixed delay (FIFO, 5 ms)": ["--batch-policy", "fifo", "--max-delay-ms", "5"],
    "deadline-aware": ["--batch-policy", "deadline"],
}


#: Calls kept in flight for the served saturation run (and the raw engine's queue depth to match).
SATURATION_IN_FLIGHT = 64


# -- workload ---------------------------------------------------------------------------------------

def workload(seed: int = 7, count: int = 4000) -> list[str]:
    """Mixed lengths: 75% single STS-B sentences (~8-30 tokens), 25% 3-12 joined (up to 256 tokens)."""
    from millibatch.engines.convert.validate import default_stsb_path, load_stsb

    path = default_stsb_path()
    if path is None:
        raise SystemExit("needs ../shared/data/stsb-test.tsv (or $MILLIBATCH_STSB)")
    sentences = [s for p in load_stsb(path) for s in (p.first, p.second)]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        if rng.random() < 0.75:
            texts.append(rng.choice(sentences))
        else:
            texts.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(3, 12))))
    return texts


# -- servers and load -------------------------------------------------------------------------------

def millibatch_server(model: Path, flags: list[str], instances: int = 1, port: int | None = None,
                      repo: Path = REPO) -> Launch:
    """`millibatch serve` as these benchmarks run it (256-row admission queue, `instances` engine
    instances), from the checkout at `repo` (another build, for bench/compare_builds.py)."""
    return serve_launch(model, ["--max-queue-rows", "256", "--instances", str(instances), *flags], port=port,
                        repo=repo)


def _describe(server: Server) -> Any:
    import grpc

    from millibatch.v1 import models_pb2, models_pb2_grpc

    with grpc.insecure_channel(server.launch.target) as channel:
        return models_pb2_grpc.ModelsStub(channel).DescribeModel(models_pb2.DescribeModelRequest(), timeout=5)


def served_stats(server: Server) -> dict[str, float]:
    """The served model's batching counters (running totals) and instance count."""
    info = _describe(server)
    b = info.batching
    return {"batches": b.batches, "rows": b.rows, "real_tokens": b.real_tokens,
            "padded_tokens": b.padded_tokens, "shed": b.shed, "rejected": b.rejected,
            "engine_seconds": b.engine_seconds, "instances": info.instances}


def served_cost_model(server: Server) -> tuple[float, float, float, float]:
    """The served model's cost-model coefficients as the server has refitted them so far."""
    c = _describe(server).cost_model
    return (c["overhead"], c["per_row"], c["per_token"], c["per_token_squared"])


def run_load(server: Server, texts_file: Path, out: Path, mode: str, duration: float, timeout: float, *,
             concurrency: int = 32, rate: float = 0.0, seed: int = 1, records: Path | None = None) -> dict[str, Any]:
    """One phase of the load generator against `server`, every call with `timeout` as its deadline: no
    warm-up, no cap on calls in flight; its result JSON (also in `out`)."""
    flags = ["--mode", mode, "--duration", str(duration), "--timeout", str(timeout), "--concurrency",
             str(concurrency), "--rate", str(rate), "--seed", str(seed), "--warmup", "0",
             "--max-outstanding", "1000000"]
    if records is not None:
        flags += ["--records", str(records)]
    result = run_loadgen(server.launch, None, texts_file, flags, out, duration + timeout + 120)
    assert result is not None
    return result


def summarise(result: dict[str, Any], duration: float) -> dict[str, float]:
    """The figures these benchmarks report from one load phase; goodput is OK answers per second."""
    kinds: dict[str, int] = result["error_kinds"]
    shed, refused = kinds.get("DEADLINE_EXCEEDED", 0), kinds.get("RESOURCE_EXHAUSTED", 0)
    answered = result["ok"] > 0
    return {
        # gRPC enforces the deadline itself (a late answer becomes DEADLINE_EXCEEDED), so every OK arrived
        # in time; OKs the client's Python loop only got round to after the deadline are counted apart.
        "sent": result["requests"], "ok": result["ok"], "goodput_rps": result["ok"] / duration,
        "p50_ms": result["p50_ms"] if answered else float("nan"),
        "p99_ms": result["p99_ms"] if answered else float("nan"), "late_answers": result["late_ok"],
        "deadline_exceeded": shed, "resource_exhausted": refused, "other_errors": result["errors"] - shed - refused,
        "client_cpu": result["client_cpu_cores"],
    }


def batch_shapes(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Mean batch shape, engine utilization and engine time per padded token between two stats reads."""
    delta = {k: after[k] - before[k] for k in after}
    instances = after["instances"]
    batches, rows = max(1.0, delta["batches"]), max(1.0, delta["rows"])
    return {"mean_batch_rows": delta["rows"] / batches, "mean_padded_length": delta["padded_tokens"] / rows,
            "engine_utilization": delta["engine_seconds"] / (wall * instances),
            "engine_us_per_padded_token": 1e6 * delta["engine_seconds"] / max(1.0, delta["padded_tokens"])}


def raw_engine_throughput(
    model: Path, texts: list[str], instances: int, in_flight: int, cost: tuple[float, float, float, float],
    seconds: float = 10.0,
) -> dict[str, float]:
    """Rows/s of the engine alone on the batches the server forms from the same texts with `in_flight`
    calls waiting (same scheduler, same cost-model coefficients as the server had), with `instances`
    sessions running concurrently as the server runs them."""
    from millibatch.batching.cost_model import CostModel
    from millibatch.batching.scheduler import BatchLimits, Scheduler
    from millibatch.batching.work import WorkItem
    from millibatch.engines.model_dir import Manifest
    from millibatch.engines.select import EngineOptions, load_engine
    from millibatch.service.tokenization import TextEncoder, to_rows

    manifest = Manifest.load(model)
    engine = load_engine(model, manifest, EngineOptions(engine="onnxruntime", device="cpu", instances=instances))
    instances = engine.info.instances  # 0 resolved the way the server resolves it
    encoder = TextEncoder(model / "tokenizer.json", manifest.max_length, 100_000)
    rows = to_rows(encoder.encode(texts, truncate=True))
    from millibatch.batching.collate import collate

    scheduler = Scheduler(BatchLimits(), CostModel(cost), engine.padded_length)

    # Batches as the server forms them in the saturation run: the same scheduler over a queue kept at
    # `in_flight` rows (each call carries one text), refilled in arrival order as batches leave.
    loop = asyncio.new_event_loop()
    waiting = iter(rows)

    def refill(count: int) -> None:
        for row in itertools.islice(waiting, count):
            scheduler.add(WorkItem(rows=[row], deadline=1e9, future=loop.create_future(), enqueued_at=0.0), 0.0)

    refill(in_flight)
    batches = []
    while scheduler.queued_rows:
        decision = scheduler.next(0.0, flush=True)
        batches.append(collate([p.item.rows[p.index] for p in decision.batch], decision.padded_length))
        refill(len(decision.batch))
    loop.close()
    done_rows = [0] * instances
    done_tokens = [0] * instances
    start = time.perf_counter()

    def drive(instance: int) -> None:
        i = instance
        while time.perf_counter() - start < seconds:
            batch = batches[i % len(batches)]
            engine.run(batch, instance)
            done_rows[instance] += batch.rows
            done_tokens[instance] += batch.rows * batch.padded_length
            i += instances

    workers = [threading.Thread(target=drive, args=(n,)) for n in range(instances)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    return {"rows_per_s": sum(done_rows) / elapsed, "instances": instances,
            "engine_us_per_padded_token": 1e6 * elapsed * instances / max(1, sum(done_tokens)),
            "mean_batch_rows": statistics.mean(b.rows for b in batches),
            # per row, as the server's counters give it: padded tokens / rows
            "mean_padded_length": sum(b.rows * b.padded_length for b in batches) / sum(b.rows for b in batches)}


def main() -> None:
    """Measure capacity, then every policy at every load level; write results.json, results.md, goodput.png."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--port", type=int, default=50151)
    parser.add_argument("--instances", type=int, default=0,
                        help="engine instances (cores split between them); 0 = the server's auto choice")
    parser.add_argument("--server-args", default="", help="extra `millibatch serve` flags for every server")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="req/s to take as capacity instead of measuring it (quick comparisons only)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "deadline_batching")
    args = parser.parse_args()
    extra = shlex.split(args.server_args)
    from bench.run import ensure_model

    model = ensure_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = workload()
    texts_file = args.out / "texts.json"
    texts_file.write_text(json.dumps(texts))
    deadline = args.deadline_ms / 1000

    # Single-request latency: one call at a time, nothing to batch with.
    spec = millibatch_server(model, [*POLICIES["deadline-aware"], *extra], args.instances, args.port)
    with running_server(spec, texts_file) as server:
        alone = run_load(server, texts_file, args.out / "single.json", "closed", args.duration / 2, 30,
                         concurrency=1)
        single = summarise(alone, args.duration / 2)
        print(f"single request: p50 {single['p50_ms']:.1f} ms p99 {single['p99_ms']:.1f} ms", flush=True)
        # Capacity under the deadline: the best goodput of closed loops at rising concurrency, each call
        # carrying the deadline. The open-loop levels below are multiples of it.
        capacity, capacity_concurrency = args.capacity, 0
        for concurrency in () if args.capacity else (4, 8, 16, 32):
            probe = run_load(server, texts_file, args.out / "capacity.json", "closed", args.duration / 2, deadline,
                             concurrency=concurrency)
            goodput = float(summarise(probe, args.duration / 2)["goodput_rps"])
            print(f"closed loop, {concurrency} in flight, {args.deadline_ms:.0f} ms deadline: {goodput:.1f} req/s",
                  flush=True)
            if goodput > capacity:
                capacity, capacity_concurrency = goodput, concurrency
        # Saturation with no deadline pressure, for the served-vs-raw-engine comparison.
        before = served_stats(server)
        saturated = run_load(server, texts_file, args.out / "saturation.json", "closed", args.duration, 30,
                             concurrency=SATURATION_IN_FLIGHT)
        served_batches = batch_shapes(before, served_stats(server), args.duration)
        served_cost = served_cost_model(server)
    print(f"capacity under the deadline: {capacity:.1f} requests/s ({capacity_concurrency} in flight)", flush=True)

    rows = []
    for name in args.policies:
        flags = POLICIES[name]
        with running_server(millibatch_server(model, [*flags, *extra], args.instances, args.port),
                            texts_file) as server:
            for load in args.loads:
                before = served_stats(server)
                result = run_load(server, texts_file, args.out / "load.json", "open", args.duration, deadline,
                                  rate=capacity * load, seed=int(load * 100))
                after = served_stats(server)
                delta = {k: after[k] - before[k] for k in after}
                summary: dict[str, object] = dict(summarise(result, args.duration))
                summary.update(policy=name, load=load, offered_rps=capacity * load,
                               goodput_of_capacity=float(summary["goodput_rps"]) / capacity,  # type: ignore[arg-type]
                               padding_ratio=delta["padded_tokens"] / max(1, delta["real_tokens"]),
                               mean_batch_rows=delta["rows"] / max(1, delta["batches"]),
                               server_shed=delta["shed"], server_rejected=delta["rejected"])
                rows.append(summary)
                print(json.dumps(summary), flush=True)

    raw = raw_engine_throughput(model, texts, args.instances, SATURATION_IN_FLIGHT, served_cost)
    saturation = summarise(saturated, args.duration)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "duration_s": args.duration, "deadline_ms": args.deadline_ms, "instances": raw["instances"],
        "capacity_rps": capacity,
        "capacity_concurrency": capacity_concurrency, "saturation_rps": saturation["goodput_rps"],
        "saturation": saturation, "raw_engine": raw, "single": single,
        "served_over_raw": float(saturation["goodput_rps"]) / raw["rows_per_s"], "served_batches": served_batches,
        "runs": rows,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    (args.out / "results.md").write_text(markdown(report))
    plot(report, args.out / "goodput.png")
    print(markdown(report))


def markdown(report: dict[str, object]) -> str:
    lines = [
        f"Deadline {report['deadline_ms']} ms, {report['duration_s']} s per level, {report['machine']}, "
        f"{report['instances']} engine instance(s), "
        f"{report['date']}. Capacity {report['capacity_rps']:.0f} req/s (1 text each): the best goodput of "
        f"closed loops at 4-32 in flight with the deadline, deadline-aware server. Goodput counts OK answers "
        f"(gRPC turns a late answer into DEADLINE_EXCEEDED); 'client saw late' counts OKs whose await "
        f"returned after the deadline in the load generator's loop.",
        "",
        "| policy | load | offered/s | goodput/s | goodput / capacity | p50 ms | p99 ms | client saw late |"
        " DEADLINE_EXCEEDED | RESOURCE_EXHAUSTED | padding ratio | rows/batch | client CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['policy']} | {r['load']}× | {r['offered_rps']:.0f} | {r['goodput_rps']:.0f} | "
            f"{r['goodput_of_capacity']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['late_answers']} | "
            f"{r['deadline_exceeded']} | {r['resource_exhausted']} | {r['padding_ratio']:.3f} | "
            f"{r['mean_batch_rows']:.1f} | {r['client_cpu']:.2f} |"
        )
    single = report["single"]
    lines += ["", f"Single request alone (closed loop, 1 in flight): p50 {single['p50_ms']:.1f} ms, "  # type: ignore[index]
              f"p99 {single['p99_ms']:.1f} ms."]  # type: ignore[index]
    raw, served = cast(dict[str, float], report["raw_engine"]), cast(dict[str, float], report["served_batches"])
    lines += ["", f"Served saturation throughput ({SATURATION_IN_FLIGHT} in flight, no deadline) "
              f"{report['saturation_rps']:.0f} req/s "
              f"vs raw engine "
              f"{raw['rows_per_s']:.0f} rows/s in-process at the same batch shapes "
              f"(mean {raw['mean_batch_rows']:.1f} rows × {raw['mean_padded_length']:.0f} tokens): "
              f"ratio {report['served_over_raw']:.2f}. Served batches meanwhile: "
              f"{served['mean_batch_rows']:.1f} rows × "
              f"{served['mean_padded_length']:.0f} tokens, engine busy {served['engine_utilization']:.0%} of the time, "
              f"{served['engine_us_per_padded_token']:.0f} µs per padded token (raw engine "
              f"{raw['engine_us_per_padded_token']:.0f})."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, object], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    policies = dict.fromkeys(r["policy"] for r in report["runs"])  # type: ignore[attr-defined]
    for policy in policies:
        runs = [r for r in report["runs"] if r["policy"] == policy]  # type: ignore[attr-defined]
        left.plot([r["load"] for r in runs], [r["goodput_of_capacity"] for r in runs], marker="o", label=policy)
        right.plot([r["load"] for r in runs], [r["p99_ms"] for r in runs], marker="o", label=policy)
    left.set(xlabel="offered load (× capacity)", ylabel="goodput / capacity", title="Answers within deadline")
    right.set(xlabel="offered load (× capacity)", ylabel="p99 latency of answers (ms)", title="p99 latency")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
