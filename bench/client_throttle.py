"""What the client's own throttle costs a caller while nothing is refused: millibatch's Python clients
with and without it, against gRPC's echo floor.

    .venv/bin/python -m bench.client_throttle                    # 5 rounds of 300 calls per variant
    .venv/bin/python -m bench.client_throttle --rounds 9 --calls 500

Client and AsyncClient throttle by default (millibatch.throttle): every call asks the throttle first and
is counted when it ends. This measures what that adds to a sequential caller. A bare grpc.aio server that
answers Embed with a fixed 384-float vector at once (bench.frontend's grpc-echo) runs pinned to one core,
and this process, pinned to the other, calls it one call at a time through `Client` and `AsyncClient`:
with `throttle=False`, by default, and with the throttle as a gRPC interceptor on the channel instead.
The variants alternate in blocks of `--calls` calls per round, so the machine's drift falls on each
alike. Per variant: the median over rounds of each round's p50 and p99, and the client's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.processes import Launch, cores_for, free_port, start_server
from bench.stats import median, percentile, publish, stamp

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "client_throttle"
#: `+throttle`: the client's default (the throttle asked in its methods); `+interceptor`: the same throttle
#: as a gRPC interceptor on the channel, the way it is offered for channels made elsewhere.
VARIANTS = ("blocking", "blocking+throttle", "blocking+interceptor", "async", "async+throttle", "async+interceptor")


def wait_serving(target: str, seconds: float) -> None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=seconds)


def timed(call: Callable[[], Any], count: int) -> tuple[list[float], float]:
    """`count` calls in a row: each one's milliseconds, and the process's CPU seconds over them."""
    cpu = time.process_time()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times, time.process_time() - cpu


async def timed_async(client: Any, count: int) -> tuple[list[float], float]:
    cpu = time.process_time()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await client.embed(["a"])
        times.append((time.perf_counter() - start) * 1e3)
    return times, time.process_time() - cpu


async def measure(target: str, rounds: int, calls: int) -> dict[str, list[dict[str, float]]]:
    """Every variant, `calls` calls a round, alternating; the first block of each is a warm-up."""
    import grpc

    from millibatch.client import AsyncClient, Client
    from millibatch.throttle import AioThrottlingInterceptor, ThrottlingInterceptor

    intercepted = grpc.intercept_channel(grpc.insecure_channel(target), ThrottlingInterceptor())
    blocking = {"blocking": Client(target, throttle=False), "blocking+throttle": Client(target),
                "blocking+interceptor": Client(channel=intercepted, throttle=False)}
    aio = {"async": AsyncClient(target, throttle=False), "async+throttle": AsyncClient(target),
           "async+interceptor": AsyncClient(channel=grpc.aio.insecure_channel(
               target, interceptors=[AioThrottlingInterceptor()]), throttle=False)}
    found: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        for round_ in range(rounds + 1):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for name in order:
                if name in blocking:
                    client = blocking[name]
                    times, cpu = timed(functools.partial(client.embed, ["a"]), calls)
                else:
                    times, cpu = await timed_async(aio[name], calls)
                if round_:  # round 0 warms every channel up
                    found[name].append({"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                                        "client_cpu_us_per_call": cpu / calls * 1e6})
    finally:
        for client in blocking.values():
            client.close()
        for one in aio.values():
            await one.channel.close()
    return found


def report(summary: dict[str, Any], command: str, when: Any) -> list[str]:
    """results.md: per variant, the medians over rounds, and the throttle's cost beside its variant."""
    rounds = summary["rounds"]
    lines = [f"# The client's throttle while nothing is refused ({when})", "",
             f"`{command}`: sequential Embed calls to a bare grpc.aio echo server on its own core, "
             f"{summary['calls']} calls per variant per round, {len(rounds['blocking'])} rounds, variants "
             "alternating. Medians over rounds.", "",
             "| variant | p50 ms | p99 ms | client CPU µs per call | p50 added, µs (median of rounds) |",
             "|---|---|---|---|---|"]
    for name in VARIANTS:
        rows = rounds[name]
        p50 = median([r["p50_ms"] for r in rows])
        added = ""
        if "+" in name:
            plain = rounds[name.partition("+")[0]]
            added = f"{median([(a['p50_ms'] - b['p50_ms']) * 1e3 for a, b in zip(rows, plain, strict=True)]):+.1f}"
        lines.append(f"| {name} | {p50:.3f} | {median([r['p99_ms'] for r in rows]):.3f} | "
                     f"{median([r['client_cpu_us_per_call'] for r in rows]):.1f} | {added} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.client_throttle", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant per round")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    cores = cores_for("split")
    port = free_port()
    target = f"127.0.0.1:{port}"
    spec = Launch("grpc-echo", [sys.executable, "-m", "bench.frontend", "serve", "--mode", "grpc-echo",
                                "--port", str(port)], "millibatch", target)
    when = stamp()
    server = start_server(spec, cores, None)
    try:
        wait_serving(target, 60)
        os.sched_setaffinity(0, cores.client)
        rounds = asyncio.run(measure(target, args.rounds, args.calls))
    finally:
        server.stop()
    summary = {"calls": args.calls, "rounds": rounds}
    command = "python -m bench.client_throttle " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    publish(args.out, summary, report(summary, command.strip(), when), when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
