"""Soak: a real `millibatch serve` process under a steady request rate; prints server RSS and latency per
interval. Not run in CI.

    .venv/bin/python bench/soak.py MODEL_DIR --duration 120 --rate 50 --interval 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from tests.service.process import serve_process


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(model: Path, duration: float, rate: float, interval: float) -> None:
    with serve_process(model) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            latencies: list[float] = []
            errors = 0

            async def one(i: int) -> None:
                nonlocal errors
                started = time.perf_counter()
                try:
                    await stub.Embed(pb.EmbedRequest(inputs=[f"soak request number {i}", "a second input"]),
                                     timeout=5)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1

            begin = time.perf_counter()
            next_report = begin + interval
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            print(f"{'t_s':>6} {'rss_mib':>8} {'calls':>6} {'errors':>6} {'p50_ms':>7} {'p99_ms':>7}")
            print(f"{0:6.0f} {rss_mib(process.pid):8.1f}")
            while time.perf_counter() - begin < duration:
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
                if time.perf_counter() >= next_report:
                    window = sorted(latencies)
                    p50 = statistics.median(window) * 1e3 if window else 0.0
                    p99 = window[max(0, int(len(window) * 0.99) - 1)] * 1e3 if window else 0.0
                    print(f"{time.perf_counter() - begin:6.0f} {rss_mib(process.pid):8.1f} {len(window):6d} "
                          f"{errors:6d} {p50:7.1f} {p99:7.1f}", flush=True)
                    latencies.clear()
                    errors = 0
                    next_report += interval
            await asyncio.gather(*tasks)


def main() -> None:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory from `millibatch convert`")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per report line")
    args = parser.parse_args()
    asyncio.run(soak(args.model, args.duration, args.rate, args.interval))


if __name__ == "__main__":
    main()
