"""Engine faults end to end: errors fail only their batch with INTERNAL, a hung engine trips the watchdog
(model NOT_SERVING, its queued work UNAVAILABLE) and the other model keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from millibatch.client import AsyncClient
from tests.helpers import running_server
from tests.service.faulty import FaultyEngine

WATCHDOG = 0.5


@pytest.fixture
async def server(tiny_embed_dir: Path, tiny_classify_dir: Path) -> AsyncIterator[Any]:
    # One engine instance (not one per core), so a hung call holds the whole engine.
    async with running_server([tiny_embed_dir, tiny_classify_dir], watchdog_seconds=WATCHDOG,
                              max_batch_rows=1, instances=1) as running:
        yield running


@pytest.fixture
async def client(server: Any) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


def inject(server: Any, model: str, mode: str | None) -> FaultyEngine:
    batcher = server.registry.models[model].batcher
    faulty = FaultyEngine(batcher.engine, mode)
    batcher.engine = faulty
    return faulty


async def status_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("mode", ["raise", "short", "missing"])
async def test_engine_error_fails_its_request_with_internal_and_no_internals(
    server: Any, client: AsyncClient, mode: str
) -> None:
    faulty = inject(server, "tiny-embed", mode)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.embed(["boom"])
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "secret" not in details and "CUDA" not in details and "shape" not in details, details
    faulty.mode = None
    assert len(await client.embed(["fine again"])) == 1  # the model is still serving


async def test_engine_error_fails_only_that_batch(server: Any, client: AsyncClient) -> None:
    faulty = inject(server, "tiny-embed", None)
    original = faulty.run

    def fail_long_batches(inputs: Any, instance: int) -> dict[str, Any]:
        if inputs.input_ids.shape[1] > 8:  # only the long "poison" input pads past 8 tokens
            raise RuntimeError("poisoned batch")
        return original(inputs, instance)

    faulty.run = fail_long_batches  # type: ignore[method-assign]
    poison = "poison " * 20
    calls = [client.embed([poison])] + [client.embed([f"ok {i}"]) for i in range(6)]
    codes = await asyncio.gather(*(status_of(c) for c in calls))
    assert codes[0] == grpc.StatusCode.INTERNAL
    assert codes[1:] == [grpc.StatusCode.OK] * 6


async def test_hung_engine_marks_model_not_serving_and_other_model_serves(server: Any, client: AsyncClient) -> None:
    faulty = inject(server, "tiny-embed", "hang")
    health = health_pb2_grpc.HealthStub(client.channel)
    try:
        first = asyncio.ensure_future(status_of(client.embed(["hangs"])))
        await asyncio.sleep(0.1)  # the first call is now stuck in the engine
        queued = [asyncio.ensure_future(status_of(client.embed([f"waits {i}"]))) for i in range(5)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await first == grpc.StatusCode.INTERNAL
        assert loop.time() - started < WATCHDOG + 1.0
        assert await asyncio.gather(*queued) == [grpc.StatusCode.UNAVAILABLE] * 5
        for _ in range(50):  # the health flip is scheduled right after the watchdog fires
            answer = await health.Check(health_pb2.HealthCheckRequest(service="millibatch.v1.Inference/tiny-embed"))
            if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        other = await health.Check(health_pb2.HealthCheckRequest(service="millibatch.v1.Inference/tiny-classify"))
        assert other.status == health_pb2.HealthCheckResponse.SERVING
        assert await status_of(client.embed(["after"])) == grpc.StatusCode.UNAVAILABLE
        assert len(await client.classify(["the other model still answers"], model="tiny-classify")) == 1
        stats = server.registry.models["tiny-embed"].batcher.stats()
        assert stats["queued_rows"] == 0
    finally:
        faulty.release.set()  # let the stuck engine thread end
