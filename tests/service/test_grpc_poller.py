"""gRPC's poller thread under each policy: found by name, set by the server, and answering as before."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import grpc
import pytest

from millibatch.client import AsyncClient
from millibatch.service.grpc_poller import poller_threads, schedule_poller
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import running_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


def policies() -> set[int]:
    return {os.sched_getscheduler(thread.native_id) for thread in poller_threads() if thread.native_id}


async def test_schedule_poller_switches_grpc_s_poller_thread_both_ways() -> None:
    server = grpc.aio.server()  # starts grpc.aio's poller (the tests' conftest turns the EventEngine off)
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        assert poller_threads(), "grpc.aio started no poller thread"
        assert schedule_poller("batch") == len(poller_threads())
        assert policies() == {os.SCHED_BATCH}
        assert schedule_poller("normal") == len(poller_threads())
        assert policies() == {os.SCHED_OTHER}
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("setting", "expected"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)])
async def test_server_puts_the_poller_under_its_setting_and_still_answers(
    tiny_embed_dir: Path, setting: str, expected: int
) -> None:
    try:
        async with running_server([tiny_embed_dir], grpc_poller_policy=setting) as server:
            assert policies() == {expected}
            async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
                vectors = await client.embed(["a call through the demoted poller"] * 3)
            assert len(vectors) == 3
    finally:
        schedule_poller("normal")  # the poller is the process's: leave it as the next test expects


async def test_server_warns_when_there_is_no_poller_to_put_under_batch(
    tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from millibatch.service import grpc_poller

    monkeypatch.setattr(grpc_poller, "poller_threads", list)  # as under the EventEngine: no such thread
    async with running_server([tiny_embed_dir], grpc_poller_policy="batch"):
        pass
    assert "grpc_poller_policy batch: no gRPC poller thread" in caplog.text


async def test_overload_batches_the_poller_while_calls_are_refused_and_restores_it(
    tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from millibatch.service import refusal_watch

    monkeypatch.setattr(refusal_watch, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(refusal_watch, "RELEASE_AFTER_SECONDS", 0.2)
    try:
        async with running_server([tiny_embed_dir], grpc_poller_policy="overload") as server:
            assert policies() == {os.SCHED_OTHER}
            (model,) = server.registry.models.values()
            model.batcher.admission.queued_seconds = 1e9  # every call's wait outlasts its deadline
            async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
                for _ in range(40):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await client.inference.Embed(pb.EmbedRequest(inputs=["too late"]), timeout=1)
                    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.15)
                assert policies() == {os.SCHED_BATCH}
                assert any(t.name == "poller-pacer" for t in threading.enumerate())
                model.batcher.admission.queued_seconds = 0.0
                await asyncio.sleep(0.5)  # quiet: released
                assert policies() == {os.SCHED_OTHER}
                assert len(await client.embed(["answered again"])) == 1
    finally:
        schedule_poller("normal")
