"""Client-side adaptive throttling: the decision on a fake clock, and both interceptors over real gRPC to a
servicer that refuses what it has no room for."""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from bench.loadgen import THROTTLED, error_kind
from millibatch.client import AsyncClient, Client
from millibatch.throttle import (
    AdaptiveThrottle,
    AioThrottlingInterceptor,
    ThrottledError,
    ThrottledRpcError,
    ThrottlingInterceptor,
)
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc

BUSY = grpc.StatusCode.RESOURCE_EXHAUSTED


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def overload(throttle: AdaptiveThrottle, clock: FakeClock, offered: int, capacity: int, seconds: int) -> list[int]:
    """Each simulated second, `offered` calls reach a server that accepts the first `capacity` it is sent and
    refuses the rest; the calls sent to it per second."""
    sent_per_second = []
    for _ in range(seconds):
        sent = 0
        for _ in range(offered):
            clock.now += 1.0 / offered
            if not throttle.admit():
                continue
            sent += 1
            throttle.record(None if sent <= capacity else BUSY)
        sent_per_second.append(sent)
    return sent_per_second


def test_nothing_is_throttled_while_the_server_accepts() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(clock=clock, draw=random.Random(0).random)
    assert overload(throttle, clock, offered=100, capacity=100, seconds=30) == [100] * 30
    assert throttle.rejection_probability == 0.0


def test_calls_in_flight_do_not_read_as_refused() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(clock=clock, draw=random.Random(0).random)
    assert all(throttle.admit() for _ in range(1000))  # a client starting with a thousand calls at once
    for _ in range(1000):
        throttle.record(None)
    assert throttle.rejection_probability == 0.0


def test_under_overload_the_server_is_sent_about_multiplier_times_what_it_accepts() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(2.0, clock=clock, draw=random.Random(1).random)
    sent = overload(throttle, clock, offered=1000, capacity=200, seconds=60)
    settled = sorted(sent[30:])
    # Offered 5x what it accepts, the server is sent about 2x: 400/s, not 1000/s.
    assert 360 <= settled[len(settled) // 2] <= 440, sent
    assert throttle.rejection_probability == pytest.approx(0.6, abs=0.05)


def test_throttling_ends_within_seconds_of_the_overload() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(2.0, window_s=5.0, clock=clock, draw=random.Random(2).random)
    overload(throttle, clock, offered=1000, capacity=200, seconds=30)
    assert throttle.rejection_probability > 0.5
    after = overload(throttle, clock, offered=150, capacity=200, seconds=15)
    assert after[-1] == 150 and throttle.rejection_probability == 0.0, after


def test_a_multiplier_below_one_or_an_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        AdaptiveThrottle(0.9)
    with pytest.raises(ValueError, match="window_s"):
        AdaptiveThrottle(window_s=0.0)


def test_a_throttled_call_reads_as_the_servers_refusal() -> None:
    for error in (ThrottledError(0.25), ThrottledRpcError(0.25)):
        assert isinstance(error, grpc.RpcError) and error.code() == BUSY
        assert error.details().startswith("throttled by the client") and "25%" in error.details()
        assert error_kind(error) == THROTTLED  # the load generator counts it apart from server refusals


class Rationing(inference_pb2_grpc.InferenceServicer):
    """Answers while `room` lasts, then refuses with RESOURCE_EXHAUSTED; counts what reaches it."""

    def __init__(self) -> None:
        self.room = 0
        self.received = 0
        self.lock = threading.Lock()

    def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        with self.lock:
            self.received += 1
            self.room -= 1
            answer = self.room >= 0
        if not answer:
            context.abort(BUSY, "server busy")
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[1.0])])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Rationing]]:
    servicer = Rationing()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        grpc_server.stop(None)


def outcomes(calls: list[Any]) -> dict[str, int]:
    counts = {"ok": 0, "server": 0, "client": 0}
    for outcome in calls:
        if not isinstance(outcome, grpc.RpcError):
            counts["ok"] += 1
        else:
            assert outcome.code() == BUSY
            counts["client" if getattr(outcome, "throttled_by_client", False) else "server"] += 1
    return counts


def embed_many(call: Callable[[], Any], calls: int = 200) -> dict[str, int]:
    """`calls` blocking calls in a row, counted by outcome."""
    ended: list[Any] = []
    for _ in range(calls):
        try:
            ended.append(call())
        except grpc.RpcError as error:
            ended.append(error)
    return outcomes(ended)


async def embed_many_async(call: Callable[[], Awaitable[Any]], calls: int = 200) -> dict[str, int]:
    """The same, awaited."""
    ended: list[Any] = []
    for _ in range(calls):
        try:
            ended.append(await call())
        except grpc.RpcError as error:
            ended.append(error)
    return outcomes(ended)


def client_counts(client: Client) -> dict[str, int]:
    with client:
        return embed_many(lambda: client.embed(["a"]))


async def async_client_counts(client: AsyncClient) -> dict[str, int]:
    try:
        return await embed_many_async(lambda: client.embed(["a"]))
    finally:
        await client.channel.close()


def test_the_blocking_client_refuses_calls_itself_once_the_server_refuses_most(
        server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 10, 0
    counts = client_counts(Client(target, throttle=AdaptiveThrottle(2.0, draw=random.Random(3).random)))
    assert counts["ok"] == 10 and counts["client"] > 100, counts
    assert servicer.received == 200 - counts["client"]  # a throttled call never reached the server


async def test_the_async_client_refuses_calls_itself_once_the_server_refuses_most(
        server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 10, 0
    counts = await async_client_counts(
        AsyncClient(target, throttle=AdaptiveThrottle(2.0, draw=random.Random(4).random)))
    assert counts["ok"] == 10 and counts["client"] > 100, counts
    assert servicer.received == 200 - counts["client"]


async def test_a_server_with_room_sees_every_call(server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 1000, 0
    client = AsyncClient(target, throttle=AdaptiveThrottle(draw=random.Random(5).random))
    try:
        answers = [await client.embed(["a"]) for _ in range(100)]
    finally:
        await client.channel.close()
    assert len(answers) == 100 and servicer.received == 100


def test_the_blocking_client_throttles_by_default_and_not_when_told(server: tuple[str, Rationing]) -> None:
    target, servicer = server
    for by_default in (True, False):
        servicer.room, servicer.received = 10, 0
        counts = client_counts(Client(target) if by_default else Client(target, throttle=False))
        assert (counts["client"] > 50) is by_default, (by_default, counts)
        assert servicer.received == 200 - counts["client"]


async def test_the_async_client_throttles_by_default_on_any_channel_and_not_when_told(
        server: tuple[str, Rationing]) -> None:
    target, servicer = server
    for given_channel, by_default in ((False, True), (True, True), (False, False)):
        servicer.room, servicer.received = 10, 0
        channel = grpc.aio.insecure_channel(target) if given_channel else None
        client = AsyncClient(target, channel=channel) if by_default else AsyncClient(target, throttle=False)
        counts = await async_client_counts(client)
        assert (counts["client"] > 50) is by_default, (given_channel, by_default, counts)
        assert counts["ok"] == 10 and servicer.received == 200 - counts["client"]


async def test_the_stubs_under_a_client_are_plain_grpc(server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 10, 0
    client = AsyncClient(target)
    try:
        throttled = 0
        for _ in range(200):  # the server refuses all but 10: the client's methods come to throttle
            try:
                await client.embed(["a"])
            except grpc.aio.AioRpcError as error:
                throttled += getattr(error, "throttled_by_client", False)
        assert throttled > 50
        received = servicer.received
        for _ in range(50):  # while the generated stub beneath sends every call
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.inference.Embed(pb.EmbedRequest(inputs=["a"]), timeout=10)
            assert not getattr(refused.value, "throttled_by_client", False)
        assert servicer.received == received + 50
    finally:
        await client.channel.close()


def test_the_blocking_interceptor_throttles_any_channel(server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 10, 0
    throttle = AdaptiveThrottle(draw=random.Random(6).random)
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(grpc.intercept_channel(channel, ThrottlingInterceptor(throttle)))
        counts = embed_many(lambda: stub.Embed(pb.EmbedRequest(inputs=["a"]), timeout=10))
    assert counts["ok"] == 10 and counts["client"] > 100, counts
    assert servicer.received == 200 - counts["client"]


async def test_the_aio_interceptor_throttles_any_channel(server: tuple[str, Rationing]) -> None:
    target, servicer = server
    servicer.room, servicer.received = 10, 0
    throttle = AdaptiveThrottle(draw=random.Random(7).random)
    async with grpc.aio.insecure_channel(target, interceptors=[AioThrottlingInterceptor(throttle)]) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        counts = await embed_many_async(lambda: stub.Embed(pb.EmbedRequest(inputs=["a"]), timeout=10))
    assert counts["ok"] == 10 and counts["client"] > 100, counts
    assert servicer.received == 200 - counts["client"]
