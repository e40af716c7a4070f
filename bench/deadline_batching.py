"""Deadline-aware batching vs no batching vs fixed-delay FIFO batching, in one run.

Open-loop Poisson arrivals of STS-B sentences (and longer joined texts) with a per-request deadline,
at multiples of the measured capacity. Reports goodput (answers within deadline per second),
p50/p99 latency, shed/rejected counts and padding ratio, plus the served saturation throughput
against the raw engine's in-process throughput at the same batch shapes.

    .venv/bin/python bench/deadline_batching.py --duration 15      # ~8 minutes on 2 cores

The load generator runs in its own process and reports its CPU use, so a saturated client shows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.processes import stop_process  # noqa: E402

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


# -- load generator (runs in a child process) -----------------------------------------------------

async def _generate(args: argparse.Namespace, texts: list[str]) -> dict[str, object]:
    import grpc

    from millibatch.v1 import inference_pb2 as pb
    from millibatch.v1 import inference_pb2_grpc

    channel = grpc.aio.insecure_channel(args.target)
    stub = inference_pb2_grpc.InferenceStub(channel)
    records: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def one(text: str) -> None:
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        start = time.perf_counter()
        try:
            await stub.Embed(pb.EmbedRequest(inputs=[text], truncate=True), timeout=args.timeout)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        records.append((time.perf_counter() - start, code))

    rng = random.Random(args.seed)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    if args.mode == "open":
        at = began
        index = 0
        while at - began < args.duration:
            at += rng.expovariate(args.rate)
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(texts[index % len(texts)]))
            index += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    else:
        async def worker(offset: int) -> None:
            i = offset
            while loop.time() - began < args.duration:
                await one(texts[i % len(texts)])
                i += args.concurrency
        await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    wall = loop.time() - began
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await channel.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"records": records, "wall": wall, "client_cpu": cpu / wall}


def loadgen_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target")
    parser.add_argument("--texts")
    parser.add_argument("--mode", choices=["open", "closed"])
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import uvloop

    result = uvloop.run(_generate(args, json.loads(Path(args.texts).read_text())))
    Path(args.out).write_text(json.dumps(result))


# -- orchestration ----------------------------------------------------------------------------------

class Server:
    """A `millibatch serve` child process."""

    def __init__(self, model: Path, port: int, flags: list[str], instances: int = 1, repo: Path = REPO) -> None:
        """Serve `model` from the checkout at `repo` (another build, for bench/compare_builds.py)."""
        env = {**os.environ, "PYTHONPATH": str(repo)}
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "millibatch", "serve", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", "0", "--max-queue-rows", "256", "--instances", str(instances),
             *flags],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_serving()

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(600):
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def _describe(self):  # type: ignore[no-untyped-def]
        import grpc

        from millibatch.v1 import models_pb2, models_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            return models_pb2_grpc.ModelsStub(channel).DescribeModel(models_pb2.DescribeModelRequest(), timeout=5)

    def stats(self) -> dict[str, float]:
        """The served model's batching counters (running totals) and instance count."""
        info = self._describe()
        b = info.batching
        return {"batches": b.batches, "rows": b.rows, "real_tokens": b.real_tokens,
                "padded_tokens": b.padded_tokens, "shed": b.shed, "rejected": b.rejected,
                "engine_seconds": b.engine_seconds, "instances": info.instances}

    def cost_model(self) -> tuple[float, float, float, float]:
        """The served model's cost-model coefficients as the server has refitted them so far."""
        c = self._describe().cost_model
        return (c["overhead"], c["per_row"], c["per_token"], c["per_token_squared"])

    def stop(self) -> None:
        stop_process(self.process, 30)


def run_load(port: int, texts_file: Path, out: Path, **options: object) -> dict[str, object]:
    args = [sys.executable, __file__, "loadgen", "--target", f"127.0.0.1:{port}", "--texts", str(texts_file),
            "--out", str(out)]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    subprocess.run(args, check=True, cwd=REPO)
    return dict(json.loads(out.read_text()))


def percentile_ms(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted seconds, in milliseconds (nearest rank below); NaN when empty."""
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(result: dict[str, object], duration: float, deadline: float) -> dict[str, float]:
    records = result["records"]
    assert isinstance(records, list)
    ok = sorted(lat for lat, code in records if code == "OK")
    # gRPC enforces the deadline itself (a late answer becomes DEADLINE_EXCEEDED), so every OK arrived
    # in time; OKs the client's Python loop only got round to after the deadline are counted apart.
    late_ok = sum(1 for lat in ok if lat > deadline)
    codes: dict[str, int] = {}
    for _, code in records:
        codes[code] = codes.get(code, 0) + 1

    return {
        "sent": len(records), "ok": len(ok), "goodput_rps": len(ok) / duration,
        "p50_ms": percentile_ms(ok, 0.5), "p99_ms": percentile_ms(ok, 0.99), "late_answers": late_ok,
        "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0),
        "resource_exhausted": codes.get("RESOURCE_EXHAUSTED", 0),
        "other_errors": sum(v for k, v in codes.items() if k not in ("OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")),
        "client_cpu": float(result["client_cpu"]),  # type: ignore[arg-type]
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
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
        return
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
    server = Server(model, args.port, [*POLICIES["deadline-aware"], *extra], args.instances)
    alone = run_load(args.port, texts_file, args.out / "single.json", mode="closed", concurrency=1,
                     duration=args.duration / 2, timeout=30)
    single = summarise(alone, args.duration / 2, 30.0)
    print(f"single request: p50 {single['p50_ms']:.1f} ms p99 {single['p99_ms']:.1f} ms", flush=True)
    # Capacity under the deadline: the best goodput of closed loops at rising concurrency, each call
    # carrying the deadline. The open-loop levels below are multiples of it.
    capacity, capacity_concurrency = args.capacity, 0
    for concurrency in () if args.capacity else (4, 8, 16, 32):
        probe = run_load(args.port, texts_file, args.out / "capacity.json", mode="closed",
                         concurrency=concurrency, duration=args.duration / 2, timeout=deadline)
        goodput = float(summarise(probe, args.duration / 2, deadline)["goodput_rps"])
        print(f"closed loop, {concurrency} in flight, {args.deadline_ms:.0f} ms deadline: {goodput:.1f} req/s",
              flush=True)
        if goodput > capacity:
            capacity, capacity_concurrency = goodput, concurrency
    # Saturation with no deadline pressure, for the served-vs-raw-engine comparison.
    before = server.stats()
    saturated = run_load(args.port, texts_file, args.out / "saturation.json", mode="closed",
                         concurrency=SATURATION_IN_FLIGHT,
                         duration=args.duration, timeout=30)
    served_batches = batch_shapes(before, server.stats(), args.duration)
    served_cost = server.cost_model()
    server.stop()
    print(f"capacity under the deadline: {capacity:.1f} requests/s ({capacity_concurrency} in flight)", flush=True)

    rows = []
    for name in args.policies:
        flags = POLICIES[name]
        server = Server(model, args.port, [*flags, *extra], args.instances)
        for load in args.loads:
            before = server.stats()
            result = run_load(args.port, texts_file, args.out / "load.json", mode="open", rate=capacity * load,
                              duration=args.duration, timeout=deadline, seed=int(load * 100))
            after = server.stats()
            delta = {k: after[k] - before[k] for k in after}
            summary: dict[str, object] = dict(summarise(result, args.duration, deadline))
            summary.update(policy=name, load=load, offered_rps=capacity * load,
                           goodput_of_capacity=float(summary["goodput_rps"]) / capacity,  # type: ignore[arg-type]
                           padding_ratio=delta["padded_tokens"] / max(1, delta["real_tokens"]),
                           mean_batch_rows=delta["rows"] / max(1, delta["batches"]),
                           server_shed=delta["shed"], server_rejected=delta["rejected"])
            rows.append(summary)
            print(json.dumps(summary), flush=True)
        server.stop()

    raw = raw_engine_throughput(model, texts, args.instances, SATURATION_IN_FLIGHT, served_cost)
    saturation = summarise(saturated, args.duration, 30.0)
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
