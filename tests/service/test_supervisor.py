"""`serve --workers N`: several real server processes on one port, their metrics merged, stopped together."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from millibatch.service.supervisor import core_shares, merge_metrics
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from tests.helpers import free_port
from tests.service.process import serve_process

DRAIN_LINE = re.compile(r"drain complete: accepted=(\d+) answered=(\d+) cancelled=(\d+) open=(\d+)")
WORKERS = 2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_merged_metrics_label_every_sample_with_its_worker() -> None:
    text = ('# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{code="OK"} 3.0\n'
            '# HELP took Seconds.\n# TYPE took histogram\ntook_bucket{le="0.1"} 1.0\ntook_bucket{le="+Inf"} 2.0\n'
            "took_count 2.0\ntook_sum 0.3\n")

    class Merged:
        def collect(self) -> Iterator[Metric]:
            return merge_metrics([text, None, text.replace("3.0", "5.0")])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())  # type: ignore[arg-type]
    merged = samples(generate_latest(registry).decode())
    assert merged[("calls_total", (("code", "OK"), ("worker", "0")))] == 3.0
    assert merged[("calls_total", (("code", "OK"), ("worker", "2")))] == 5.0
    assert merged[("took_bucket", (("le", "+Inf"), ("worker", "2")))] == 2.0
    assert merged[("millibatch_worker_up", (("worker", "0"),))] == 1.0
    assert merged[("millibatch_worker_up", (("worker", "1"),))] == 0.0  # could not be read: no samples
    assert not [key for key in merged if ("worker", "1") in key[1] and key[0] != "millibatch_worker_up"]


def test_each_worker_gets_an_equal_share_of_the_cores() -> None:
    assert core_shares([0, 1, 2, 3], 2) == [{0, 1}, {2, 3}]
    assert core_shares([3, 1, 2, 0, 5, 4, 7], 3) == [{0, 1}, {2, 3}, {4, 5, 7}]
    assert core_shares([0, 1, 2], 2) == [{0}, {1, 2}]
    assert core_shares([0], 2) == [{0}, {0}]  # fewer cores than workers: they share them all


def answered_by_worker(metrics_port: int) -> dict[str, float]:
    """OK Embed calls per worker, from the supervisor's merged endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = collections.defaultdict(float)
    for (name, labels), value in samples(text).items():
        found = dict(labels)
        if name == "millibatch_requests_total" and found.get("rpc") == "Embed" and found.get("code") == "OK":
            counts[found["worker"]] += value
    return counts


async def embed_on_new_connections(port: int, calls: int) -> collections.Counter[str]:
    """`calls` Embed calls at once, each on its own connection (SO_REUSEPORT spreads connections)."""
    outcomes: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await inference_pb2_grpc.InferenceStub(channel).Embed(pb.EmbedRequest(inputs=[f"call {i}"]), timeout=30)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[f"{error.code().name}: {(error.details() or '')[:40]}"] += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    return outcomes


async def test_workers_share_the_port_and_drain_together_on_sigterm(tiny_embed_dir: Path) -> None:
    metrics_port = free_port()
    logs: list[str] = []
    flags = ("--workers", str(WORKERS), "--instances", "1", "--metrics-port", str(metrics_port),
             "--drain-seconds", "10")
    with serve_process(tiny_embed_dir, *flags, log_sink=logs) as (process, port):
        workers = psutil.Process(process.pid).children()
        assert len(workers) == WORKERS
        assert [set(w.cpu_affinity()) for w in workers] == core_shares(sorted(os.sched_getaffinity(0)), WORKERS)
        # The first "serving" line came from one worker; calls on fresh connections reach both once the
        # other is up too (the kernel spreads connections over the sockets sharing the port).
        ends = time.monotonic() + 60
        while time.monotonic() < ends and len(answered_by_worker(metrics_port)) < WORKERS:
            await embed_on_new_connections(port, 16)  # UNAVAILABLE from a worker still loading its model
        assert set(answered_by_worker(metrics_port)) == {"0", "1"}
        # Calls in flight across the SIGTERM: each worker drains its own, none is lost.
        in_flight = asyncio.create_task(embed_on_new_connections(port, 24))
        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        outcomes = await asyncio.wait_for(in_flight, 60)
        code = await asyncio.to_thread(process.wait, 60)
    assert code == 0
    lost = {k: v for k, v in outcomes.items() if k != "OK" and not k.startswith("UNAVAILABLE")}
    assert not lost, outcomes
    drained = [tuple(map(int, m.groups())) for m in map(DRAIN_LINE.search, logs) if m]
    assert len(drained) == WORKERS, logs[-20:]
    assert all(answered == accepted and cancelled == still_open == 0
               for accepted, answered, cancelled, still_open in drained), drained
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_a_worker_that_dies_stops_the_others(tiny_embed_dir: Path) -> None:
    logs: list[str] = []
    flags = ("--workers", str(WORKERS), "--instances", "1")
    with serve_process(tiny_embed_dir, *flags, log_sink=logs) as (process, _):
        first, *others = psutil.Process(process.pid).children()
        first.kill()
        code = process.wait(60)
    assert code == 1
    assert any("exited with -9: stopping the others" in line for line in logs), logs[-10:]
    assert not [w for w in others if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
