"""The real gRPC server on a loopback port: embeddings, classification, tokenization, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from millibatch.client import AsyncClient
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import TINY_LABELS, running_server

SENTENCES = [
    "A man is playing a guitar.",
    "The cat sat on the mat.",
    "Stocks fell sharply on Tuesday after the central bank raised rates.",
    "hello",
    "Transformers encode text into vectors; similar meanings land close together, and far apart otherwise.",
]


@pytest.fixture
async def server(tiny_embed_dir: Path, tiny_classify_dir: Path):  # type: ignore[no-untyped-def]
    async with running_server([tiny_embed_dir, tiny_classify_dir], max_inputs_per_request=16) as running:
        yield running


@pytest.fixture
async def client(server):  # type: ignore[no-untyped-def]
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


async def test_embed_returns_unit_vectors_in_input_order(client: AsyncClient) -> None:
    batch = np.array(await client.embed(SENTENCES))
    assert batch.shape == (len(SENTENCES), 32)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, sentence in enumerate(SENTENCES):
        solo = np.array((await client.embed([sentence]))[0])
        np.testing.assert_allclose(batch[i], solo, atol=1e-5)


async def test_normalize_false_returns_raw_pooled_vectors(client: AsyncClient) -> None:
    raw = np.array(await client.embed(SENTENCES[:2], normalize=False))
    unit = np.array(await client.embed(SENTENCES[:2], normalize=True))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


async def test_response_carries_usage_and_timing(client: AsyncClient) -> None:
    response = await client.inference.Embed(pb.EmbedRequest(inputs=["a b c", "hello"]), timeout=10)
    assert response.model == "tiny-embed"
    assert response.usage.prompt_tokens == 5 + 3
    timing = response.timing
    assert timing.total_us >= timing.inference_us > 0
    assert timing.batches >= 1


async def test_64_concurrent_clients_get_their_own_answers(client: AsyncClient) -> None:
    texts = [f"{SENTENCES[i % len(SENTENCES)]} variant {i}" for i in range(64)]
    expected = [np.array((await client.embed([t]))[0]) for t in texts]
    answers = await asyncio.gather(*(client.embed([t]) for t in texts))
    for want, got in zip(expected, answers, strict=True):
        np.testing.assert_allclose(np.array(got[0]), want, atol=1e-5)


async def test_classify_uses_config_labels_with_pairs_and_top_k(client: AsyncClient) -> None:
    results = await client.classify(["the food was great", "awful"], model="tiny-classify")
    assert len(results) == 2
    for labels in results:
        assert sorted(name for name, _ in labels) == sorted(TINY_LABELS)
        scores = [score for _, score in labels]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    pairs = await client.classify(["a man plays", "a man plays"], text_pairs=["music is made", "nobody moves"],
                                  model="tiny-classify", top_k=1, raw_scores=True)
    assert [len(p) for p in pairs] == [1, 1]
    assert pairs[0] != pairs[1]  # the second text changes the answer


async def test_classify_pair_count_mismatch_is_invalid(client: AsyncClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.classify(["a", "b"], text_pairs=["only one"], model="tiny-classify")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tokenize_returns_ids_tokens_and_offsets(client: AsyncClient) -> None:
    response = await client.tokenize(["Hello world"])
    tokens = response.results[0]
    assert list(tokens.tokens) == ["[CLS]", "hello", "world", "[SEP]"]
    assert [(o.start, o.end) for o in tokens.offsets] == [(0, 0), (0, 5), (6, 11), (0, 0)]
    assert tokens.ids[0] == 101 and tokens.ids[-1] == 102


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.EmbedRequest(inputs=[]), grpc.StatusCode.INVALID_ARGUMENT, "inputs is empty"),
        (pb.EmbedRequest(inputs=["ok", ""]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[1] is empty"),
        (pb.EmbedRequest(model="nope", inputs=["a"]), grpc.StatusCode.NOT_FOUND, "nope"),
        (pb.EmbedRequest(inputs=["word " * 100]), grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
        (pb.EmbedRequest(inputs=["x"] * 17), grpc.StatusCode.INVALID_ARGUMENT, "limit is 16"),
        (pb.EmbedRequest(model="tiny-classify", inputs=["a"]), grpc.StatusCode.FAILED_PRECONDITION, "classify"),
    ],
)
async def test_bad_input_gets_clear_status_and_server_keeps_serving(
    client: AsyncClient, request_: pb.EmbedRequest, code: grpc.StatusCode, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.inference.Embed(request_, timeout=10)
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")
    assert len(await client.embed(["still serving"])) == 1


async def test_truncate_cuts_long_inputs_to_the_model_limit(client: AsyncClient) -> None:
    response = await client.inference.Embed(pb.EmbedRequest(inputs=["word " * 100], truncate=True), timeout=10)
    assert response.usage.prompt_tokens == 64


async def test_health_per_service_and_reflection(server, client: AsyncClient) -> None:  # type: ignore[no-untyped-def]
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "millibatch.v1.Inference", "millibatch.v1.Models", "millibatch.v1.Inference/tiny-embed"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)

    async def ask() -> reflection_pb2.ServerReflectionResponse:
        async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            return reply
        raise AssertionError("no reflection reply")

    names = {s.name for s in (await ask()).list_services_response.service}
    assert {"millibatch.v1.Inference", "millibatch.v1.Models", "grpc.health.v1.Health"} <= names


async def test_models_service_describes_served_models(client: AsyncClient) -> None:
    listing = await client.list_models()
    assert listing.default_model == "tiny-embed"
    by_name = {m.name: m for m in listing.models}
    assert by_name["tiny-embed"].task == "embed" and by_name["tiny-embed"].dimensions == 32
    assert list(by_name["tiny-classify"].labels) == TINY_LABELS
    assert by_name["tiny-embed"].engine == "onnxruntime" and by_name["tiny-embed"].ready
    assert set(by_name["tiny-embed"].cost_model) == {"overhead", "per_row", "per_token", "per_token_squared"}
    await client.embed(["counted by the batcher"], model="tiny-embed")
    stats = {m.name: m for m in (await client.list_models()).models}["tiny-embed"].batching
    assert stats.batches >= 1 and stats.padded_tokens >= stats.real_tokens > 0 and stats.engine_seconds > 0
