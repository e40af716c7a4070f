"""Refusing a call before its request is read (`refuse_unread`, off by default; service/edge.py's gates) on
a real server.

While the plane is refusing calls, the compute methods are served as stream-unary behind a gate that
decides from the call's deadline alone. Bytes that are not a valid request prove the point: read, they
would be INVALID_ARGUMENT; refused unread, the caller hears RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from millibatch.client import AsyncClient
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import code_of, running_server
from tests.service.test_metrics import free_port, scrape, value

EMBED = "/millibatch.v1.Inference/Embed"
#: Not a valid EmbedRequest: field 1 (inputs, a string) with a length running past the end.
GARBAGE = b"\x0a\xff\xff\xff\x0f"


def raw_embed(channel: grpc.aio.Channel) -> Any:
    """Embed taking and returning raw bytes, so a test can send bytes no stub would."""
    return channel.unary_unary(EMBED, request_serializer=None, response_deserializer=None)


@pytest.fixture
async def refusing(tiny_embed_dir: Path) -> AsyncIterator[Any]:
    """A server that is refusing calls, with a queue no deadline can wait out."""
    port = free_port()
    async with running_server([tiny_embed_dir], metrics_port=port, refuse_unread=True) as server:
        server.plane.refusing = True
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        yield server


async def test_a_call_is_refused_before_its_request_is_read(refusing: Any) -> None:
    server = refusing
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        code, details = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("server busy: about") and "before its deadline" in details
    samples = await asyncio.to_thread(scrape, server.metrics_port)
    # Counted once, under the only model's name, with its reason; nothing was tokenized.
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="RESOURCE_EXHAUSTED") == 1
    assert value(samples, "millibatch_rejected_requests_total", model="tiny-embed", reason="overloaded") == 1
    assert value(samples, "millibatch_tokenize_duration_seconds_count", model="tiny-embed") == 0
    assert server.ledger.open == 0 and server.ledger.accepted == server.ledger.answered == 1


async def test_a_deadline_too_short_for_any_answer_is_deadline_exceeded_unread(refusing: Any) -> None:
    server = refusing
    (model,) = server.registry.models.values()
    model.batcher.admission.queued_seconds = 0.0
    # No answer can reach its caller within a minute: no deadline of 5 s can be met.
    model.batcher.limits = dataclasses.replace(model.batcher.limits, safety=60.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        code, _ = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_call_the_gate_lets_through_is_read_and_answered(refusing: Any) -> None:
    server = refusing
    (model,) = server.registry.models.values()
    model.batcher.admission.queued_seconds = 0.0
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        vectors = await client.embed(["hello world", "a b c"])
        assert len(vectors) == 2 and len(vectors[0]) == model.manifest.dimensions
        code, _ = await code_of(client.inference.Embed(pb.EmbedRequest(inputs=["x"], model="nope"), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = await code_of(client.inference.Embed(pb.EmbedRequest(inputs=[]), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        code, details = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details
    assert server.ledger.open == 0 and server.ledger.accepted == server.ledger.answered


async def test_other_errors_come_first_where_the_gate_does_not_apply(refusing: Any) -> None:
    server = refusing
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        # Classify needs a classifier: the only model embeds, so the request is read and says why.
        code, details = await code_of(client.inference.Classify(pb.ClassifyRequest(inputs=["x"]), timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "does embed" in details


async def test_not_refusing_reads_every_request(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], refuse_unread=True) as server:
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        assert not server.plane.refusing  # a few refusals do not engage the watch
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            code, _ = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_with_several_models_the_request_is_read_to_know_which(tiny_embed_dir: Path,
                                                                     tiny_classify_dir: Path) -> None:
    async with running_server([tiny_embed_dir, tiny_classify_dir], refuse_unread=True) as server:
        server.plane.refusing = True
        for model in server.registry.models.values():
            model.batcher.admission.queued_seconds = 1e9
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            code, _ = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            code, details = await code_of(client.inference.Embed(pb.EmbedRequest(inputs=["x"]), timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("server busy")


async def test_api_keys_are_checked_before_the_gate(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], api_keys=["a-key"], refuse_unread=True) as server:
        server.plane.refusing = True
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            code, _ = await code_of(raw_embed(channel)(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_watch_turns_it_on_under_refusals_and_off_when_they_stop(
    tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from millibatch.service import refusal_watch

    monkeypatch.setattr(refusal_watch, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(refusal_watch, "RELEASE_AFTER_SECONDS", 0.2)
    async with running_server([tiny_embed_dir], grpc_poller_policy="normal", refuse_unread=True) as server:
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            for _ in range(40):
                code, _ = await code_of(client.inference.Embed(pb.EmbedRequest(inputs=["too late"]), timeout=1))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.15)
            assert server.plane.refusing
            model.batcher.admission.queued_seconds = 0.0
            await asyncio.sleep(0.5)
            assert not server.plane.refusing
            assert len(await client.embed(["answered again"])) == 1


async def test_the_watch_tells_the_http_door_too(tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the HTTP door on, the watch runs whatever else is off: the door's 429s then advise no retry."""
    from millibatch.service import refusal_watch

    monkeypatch.setattr(refusal_watch, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(refusal_watch, "RELEASE_AFTER_SECONDS", 0.2)
    async with running_server([tiny_embed_dir], grpc_poller_policy="normal", http_port=free_port()) as server:
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10, throttle=False) as client:
            for _ in range(40):
                code, _ = await code_of(client.inference.Embed(pb.EmbedRequest(inputs=["too late"]), timeout=1))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.15)
            assert server.plane.overloaded and not server.plane.refusing  # refuse_unread stays off
            model.batcher.admission.queued_seconds = 0.0
            await asyncio.sleep(0.5)
            assert not server.plane.overloaded


async def test_off_by_default(tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from millibatch.service import refusal_watch
    from millibatch.settings import Settings

    assert Settings().refuse_unread is False
    monkeypatch.setattr(refusal_watch, "CHECK_SECONDS", 0.05)
    async with running_server([tiny_embed_dir], grpc_poller_policy="normal") as server:
        (model,) = server.registry.models.values()
        model.batcher.admission.queued_seconds = 1e9
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            embed = raw_embed(channel)
            for _ in range(40):
                await code_of(embed(pb.EmbedRequest(inputs=["x"]).SerializeToString(), timeout=1))
            await asyncio.sleep(0.15)
            assert not server.plane.refusing
            server.plane.refusing = True  # even so: no gates were registered
            code, _ = await code_of(embed(GARBAGE, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
