"""SIGTERM under load on a real `millibatch serve` process: every call gets an answer (success or
UNAVAILABLE before it was accepted), none is lost, and the process exits 0."""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from tests.service.process import serve_process

IN_FLIGHT = 200  # below max_concurrent_streams (256): above it HTTP/2 refuses the extra streams at once
#: UNAVAILABLE details that mean "refused before it was accepted": draining, the port already closed, or
#: HTTP/2 REFUSED_STREAM (error code 7), which by the HTTP/2 spec means the server did no work on it.
REFUSED = ("shutting down", "not accepting", "failed to connect", "connection refused", "Connection refused",
           "RST_STREAM with error code 7")


@pytest.mark.xfail(strict=False, reason=(
    "open: with 200 sequential senders the server answers ~240 calls, then in-flight calls stall until the drain "
    "ends and are CANCELLED (see docs/RELIABILITY.md); exit code 0 and health flip do work"))
async def test_sigterm_under_load_loses_no_request(tiny_embed_dir: Path) -> None:
    with serve_process(tiny_embed_dir, "--drain-seconds", "10", "--max-queue-rows", "4096") as (process, port):
        outcomes: collections.Counter[str] = collections.Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            stop_sending = asyncio.Event()

            async def one(i: int) -> None:
                try:
                    await stub.Embed(pb.EmbedRequest(inputs=[f"request {i}", "second input"]), timeout=30)
                    outcomes["ok"] += 1
                except grpc.aio.AioRpcError as error:
                    details = error.details() or ""
                    refused = error.code() == grpc.StatusCode.UNAVAILABLE and any(r in details for r in REFUSED)
                    outcomes[("refused: " if refused else "LOST ") + f"{error.code().name}: {details[:60]}"] += 1

            async def sender(worker: int) -> None:
                i = 0
                while not stop_sending.is_set():
                    await one(worker * 1_000_000 + i)
                    i += 1

            senders = [asyncio.create_task(sender(w)) for w in range(IN_FLIGHT)]
            for _ in range(300):  # under way: answers are flowing (slow first calls on a busy 2-core box)
                if outcomes["ok"] >= IN_FLIGHT:
                    break
                await asyncio.sleep(0.05)
            assert outcomes["ok"] > 0, outcomes
            answered_before = sum(outcomes.values())
            process.send_signal(signal.SIGTERM)
            for _ in range(100):  # health flips to NOT_SERVING as the drain starts
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.aio.AioRpcError:
                    break  # already closed
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)  # keep sending into the drain and past the close
            stop_sending.set()
            await asyncio.wait_for(asyncio.gather(*senders), 60)
        code = await asyncio.to_thread(process.wait, 30)
    total = sum(outcomes.values())
    print(f"\nSIGTERM with {IN_FLIGHT} calls in flight: {total} calls, {answered_before} answered before the "
          f"signal; outcomes {dict(outcomes)}; exit code {code}")
    assert code == 0
    assert any(k.startswith("refused") for k in outcomes), outcomes
    assert not [k for k in outcomes if k.startswith("LOST")], outcomes
