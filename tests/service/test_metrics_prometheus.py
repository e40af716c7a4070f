"""A real Prometheus scrapes a real server: request counts by code and the latency median agree with
what the client sent and measured."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from millibatch.client import AsyncClient
from millibatch.service.metrics import LATENCY_BUCKETS
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import running_server
from tests.service.test_metrics import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus binary not installed (Debian package `prometheus`; .ci/run installs it)"
)
GOOD, EMPTY, UNKNOWN = 20, 3, 2


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Prometheus on a loopback port scraping 127.0.0.1:<metrics port> every second; yields both ports."""
    metrics_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: millibatch\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        until = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"prometheus did not become ready: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.2)
        yield metrics_port, web_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def query(web_port: int, promql: str) -> list[dict[str, object]]:
    """Instant query through the HTTP API; the result vector."""
    url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def counts_by_code(web_port: int) -> dict[str, float]:
    result = query(web_port, 'sum by (code) (millibatch_requests_total{model="tiny-embed", rpc="Embed"})')
    return {r["metric"]["code"]: float(r["value"][1]) for r in result}  # type: ignore[index]


async def test_prometheus_sees_what_the_client_sent(tiny_embed_dir: Path, prometheus: tuple[int, int]) -> None:
    metrics_port, web_port = prometheus
    latencies = []
    async with running_server([tiny_embed_dir], metrics_port=metrics_port) as server:
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            for i in range(GOOD):
                started = time.perf_counter()
                await client.embed([f"sentence number {i}", "the quick brown fox"])
                latencies.append(time.perf_counter() - started)
            for _ in range(EMPTY):
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.inference.Embed(pb.EmbedRequest(inputs=[]), timeout=10)
            for _ in range(UNKNOWN):
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.inference.Embed(pb.EmbedRequest(inputs=["x"], model="missing"), timeout=10)
        # Wait (bounded) until a scrape after the traffic has landed. Query while the server still runs:
        # once a scrape of a stopped server fails, Prometheus marks its series stale and answers nothing.
        expected = {"OK": float(GOOD), "INVALID_ARGUMENT": float(EMPTY)}
        until = time.monotonic() + 20
        seen: dict[str, float] = {}
        while time.monotonic() < until:
            seen = await asyncio.to_thread(counts_by_code, web_port)
            if seen == expected:
                break
            await asyncio.sleep(0.5)
        assert seen == expected
        unknown = await asyncio.to_thread(query, web_port, 'sum(millibatch_requests_total{model="unknown"})')
        assert float(unknown[0]["value"][1]) == UNKNOWN  # type: ignore[index]

        # The median over all OK and failed Embed calls, from the cumulative buckets.
        median = await asyncio.to_thread(
            query, web_port, 'histogram_quantile(0.5, sum by (le) ('
            'millibatch_request_duration_seconds_bucket{model="tiny-embed", rpc="Embed"}))')
    server_median = float(median[0]["value"][1])  # type: ignore[index]
    latencies.sort()
    client_median = latencies[len(latencies) // 2]
    # Server time is part of client time, so it cannot exceed it by more than the bucket it falls in;
    # it should not be vanishingly small either (tokenize + batch + engine take real time).
    ceiling = next(b for b in LATENCY_BUCKETS if b >= client_median)
    assert math.isfinite(server_median)
    assert client_median / 20 <= server_median <= ceiling, (server_median, client_median)
