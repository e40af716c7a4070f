"""SIGTERM under load on a real `millibatch serve` process: every call gets an answer (success or
UNAVAILABLE before it was accepted), none is lost, and the process exits 0."""

from __future__ import annotations

import asyncio
import collections
import re
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from tests.service.process import serve_process

IN_FLIGHT = 200  # below max_concurrent_streams (256): above it HTTP/2 refuses the extra streams at once
#: UNAVAILABLE details that mean "refused before it was accepted": draining, the port already closed, or
#: HTTP/2 REFUSED_STREAM (error code 7), which by the HTTP/2 spec means the server did no work on it.
REFUSED = ("shutting down", "not accepting", "failed to connect", "connection refused", "Connection refused",
           "RST_STREAM with error code 7")


DRAIN_LINE = re.compile(r"drain complete: accepted=(\d+) answered=(\d+) cancelled=(\d+) open=(\d+)")


async def test_sigterm_under_load_loses_no_accepted_request(tiny_embed_dir: Path) -> None:
    """Every call a handler accepted is answered (OK, or UNAVAILABLE once draining), none cancelled.

    Calls that gRPC core had received but not yet handed to a handler when the server stops are
    never dispatched and end CANCELLED (grpc/grpc#41785); they were not accepted and did no work, so a
    client may retry them. The server's ledger proves which is which: every call it accepted appears on
    the client side as OK or as the handler's UNAVAILABLE refusal, and everything else never reached it.
    """
    logs: list[str] = []
    flags = ("--drain-seconds", "10", "--max-queue-rows", "4096")
    with serve_process(tiny_embed_dir, *flags, log_sink=logs) as (process, port):
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
                    if error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in details:
                        outcomes["handler refused"] += 1
                    elif error.code() == grpc.StatusCode.UNAVAILABLE and any(r in details for r in REFUSED):
                        outcomes["transport refused"] += 1
                    elif error.code() == grpc.StatusCode.CANCELLED or "Cancelling all calls" in details:
                        # gRPC's end-of-grace cancellation of calls it never dispatched (either code).
                        outcomes["cancelled"] += 1
                    else:
                        outcomes[f"LOST {error.code().name}: {details[:60]}"] += 1

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
    drained = [m for m in map(DRAIN_LINE.search, logs) if m]
    assert drained, logs[-20:]
    accepted, answered, cancelled, still_open = map(int, drained[-1].groups())
    print(f"\nSIGTERM with {IN_FLIGHT} senders: client outcomes {dict(outcomes)}; server accepted={accepted} "
          f"answered={answered} cancelled={cancelled} open={still_open}; exit code {code}")
    assert code == 0
    assert not [k for k in outcomes if k.startswith("LOST")], outcomes
    assert cancelled == 0 and still_open == 0 and answered == accepted
    # Every accepted call reached its client as an answer; the CANCELLED ones were never accepted.
    assert outcomes["ok"] + outcomes["handler refused"] == accepted
    assert outcomes["handler refused"] > 0 or outcomes["transport refused"] > 0
