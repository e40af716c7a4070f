"""prometheus-adapter's queries, run by a real Prometheus against a real server: the refused-call ratio the
HPA scales on reads 0 before a pod's first call (not "no data", which would hold the HPA's scale-down)
and the share of calls refused once some are."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import yaml

from millibatch.client import AsyncClient
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import running_server
from tests.service.test_metrics_prometheus import PROMETHEUS, prometheus, query  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "rules.yaml"
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus binary not installed (Debian package `prometheus`; .ci/run installs it)")
#: Calls sent at once per burst, and bursts; the queue holds two rows, so most of each burst is refused.
BURST, BURSTS = 10, 6


def adapter_query(name: str) -> str:
    """The adapter rule's metrics query for `name`, as the adapter would send it for the pods of one job."""
    (rule,) = [r for r in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"] if r["name"]["as"] == name]
    series = rule["name"]["matches"].strip("^$")
    return (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'job="millibatch"')
            .replace("<<.GroupBy>>", "job"))


async def ratio(web_port: int, promql: str) -> float | None:
    result = await asyncio.to_thread(query, web_port, promql)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


async def settled(web_port: int, promql: str, done: object, wait: float = 20.0) -> float | None:
    """Query until the answer satisfies `done` (a callable) or `wait` seconds pass; the last answer."""
    until = time.monotonic() + wait
    value = await ratio(web_port, promql)
    while not done(value) and time.monotonic() < until:  # type: ignore[operator]
        await asyncio.sleep(0.5)
        value = await ratio(web_port, promql)
    return value


async def burst(client: AsyncClient) -> tuple[int, int]:
    """BURST calls at once; (answered, refused)."""
    async def one(i: int) -> grpc.StatusCode:
        try:
            await client.inference.Embed(pb.EmbedRequest(inputs=[f"sentence {i}"]), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(one(i) for i in range(BURST)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    return codes.count(grpc.StatusCode.OK), codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_the_refused_ratio_reads_zero_before_any_call_then_the_share_refused(
        tiny_embed_dir: Path, prometheus: tuple[int, int]) -> None:  # noqa: F811 (the fixture)
    metrics_port, web_port = prometheus
    promql = adapter_query("millibatch_refused_ratio")
    # A queue of two rows that always waits 50 ms for company: of each burst, two calls are answered.
    async with running_server([tiny_embed_dir], metrics_port=metrics_port, batch_policy="fifo", max_delay_ms=50,
                              max_queue_rows=2) as server:
        assert await settled(web_port, promql, lambda v: v is not None) == 0.0
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            answered, refused = await burst(client)  # every series exists from here on
            await asyncio.sleep(2.5)  # two scrapes
            for _ in range(BURSTS):
                more = await burst(client)
                answered, refused = answered + more[0], refused + more[1]
                await asyncio.sleep(0.5)
        share = refused / (answered + refused)
        assert 0.5 < share < 1.0, (answered, refused)
        value = await settled(web_port, promql, lambda v: v is not None and abs(v - share) < 0.1)
    assert value is not None and abs(value - share) < 0.1, (value, share)
