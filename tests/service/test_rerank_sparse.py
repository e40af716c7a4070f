"""Rerank (cross-encoders, through the batcher as pairs) and EmbedSparse (SPLADE) on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
from tokenizers import Tokenizer

from millibatch.client import AsyncClient, rerank_request, sparse_request
from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.kserve import grpc_service_pb2_grpc
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import code_of, pytorch_splade, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "How do cats sleep?"
DOCUMENTS = ["Cats sleep up to sixteen hours a day.", "The stock market fell.", "hello",
             "Dogs and cats both like to nap in the sun.", "Rates were raised on Tuesday."]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tiny_embed_dir: Path, tiny_classify_dir: Path, tiny_reranker_dir: Path,
                 tiny_sparse_dir: Path) -> AsyncIterator[AsyncClient]:
    models = [tiny_reranker_dir, tiny_embed_dir, tiny_classify_dir, tiny_sparse_dir]
    async with running_server(models, max_inputs_per_request=8) as server:  # noqa: SIM117
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
            yield c


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


async def test_one_label_rerank_is_the_sigmoid_of_the_logit_best_first(client: AsyncClient) -> None:
    logits = np.array([r[0][1] for r in await client.classify(
        [QUERY] * len(DOCUMENTS), model="tiny-reranker", text_pairs=DOCUMENTS, raw_scores=True)])
    ranked = await client.rerank(QUERY, DOCUMENTS, model="tiny-reranker")
    assert [index for index, _, _ in ranked] == np.argsort(-logits, kind="stable").tolist()
    np.testing.assert_allclose([score for _, score, _ in ranked], sigmoid(logits[[i for i, _, _ in ranked]]),
                               rtol=1e-6)
    assert all(document is None for _, _, document in ranked)


async def test_top_n_and_return_documents(client: AsyncClient) -> None:
    everything = await client.rerank(QUERY, DOCUMENTS, model="tiny-reranker")
    top = await client.rerank(QUERY, DOCUMENTS, model="tiny-reranker", top_n=2, return_documents=True)
    assert [(i, s) for i, s, _ in top] == [(i, s) for i, s, _ in everything[:2]]
    assert [d for _, _, d in top] == [DOCUMENTS[i] for i, _, _ in top]
    assert len(await client.rerank(QUERY, DOCUMENTS, model="tiny-reranker", top_n=99)) == len(DOCUMENTS)


async def test_rerank_usage_and_timing(client: AsyncClient) -> None:
    response = await client.inference.Rerank(rerank_request(QUERY, DOCUMENTS[:2], model="tiny-reranker"), timeout=10)
    classified = await client.inference.Classify(pb.ClassifyRequest(
        model="tiny-reranker", inputs=[QUERY] * 2, text_pairs=DOCUMENTS[:2]), timeout=10)
    assert response.usage.prompt_tokens == classified.usage.prompt_tokens > 0
    assert response.timing.inference_us > 0 and response.model == "tiny-reranker"


async def test_several_labels_rank_by_the_last_labels_probability(client: AsyncClient) -> None:
    classified = await client.classify([QUERY] * len(DOCUMENTS), model="tiny-classify", text_pairs=DOCUMENTS)
    positive = np.array([dict(labels)["positive"] for labels in classified])
    ranked = await client.rerank(QUERY, DOCUMENTS, model="tiny-classify")
    assert [i for i, _, _ in ranked] == np.argsort(-positive, kind="stable").tolist()
    np.testing.assert_allclose([s for _, s, _ in ranked], np.sort(positive)[::-1], rtol=1e-6)


async def test_long_pairs_need_truncate_and_follow_its_direction(client: AsyncClient) -> None:
    long = "word " * 100
    code, details = await code_of(client.rerank(QUERY, [long], model="tiny-reranker"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncate" in details
    right = await client.rerank(QUERY, [long + "end"], model="tiny-reranker", truncate=True)
    left = await client.rerank(QUERY, ["start " + long], model="tiny-reranker", truncate=True,
                               truncation_direction="left")
    assert len(right) == len(left) == 1


@pytest.mark.parametrize(("query", "documents", "model", "code", "message"), [
    ("", ["a"], "tiny-reranker", grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
    ("q", [], "tiny-reranker", grpc.StatusCode.INVALID_ARGUMENT, "0 documents in one request; send between 1 and 8"),
    ("q", ["a", ""], "tiny-reranker", grpc.StatusCode.INVALID_ARGUMENT, "documents[1] is empty"),
    ("q", ["a"] * 9, "tiny-reranker", grpc.StatusCode.INVALID_ARGUMENT, "9 documents"),
    ("q", ["a"], "tiny-embed", grpc.StatusCode.FAILED_PRECONDITION, "does embed, not classify"),
    ("q", ["a"], "missing", grpc.StatusCode.NOT_FOUND, "'missing' is not served"),
])
async def test_bad_reranks_are_refused(client: AsyncClient, query: str, documents: list[str], model: str,
                                       code: grpc.StatusCode, message: str) -> None:
    got, details = await code_of(client.rerank(query, documents, model=model))
    assert (got, message in details) == (code, True), details


def dense(vectors: list[dict[int, float]], size: int) -> np.ndarray:
    out = np.zeros((len(vectors), size), dtype=np.float32)
    for row, vector in enumerate(vectors):
        for index, weight in vector.items():
            out[row, index] = weight
    return out


async def test_embed_sparse_equals_pytorch_and_keeps_weights_above_the_threshold(
    client: AsyncClient, tiny_sparse_dir: Path
) -> None:
    texts = DOCUMENTS[:3]
    tokenizer = Tokenizer.from_file(str(tiny_sparse_dir / "tokenizer.json"))
    reference = pytorch_splade(tiny_sparse_dir.parent / "checkpoint", texts, tokenizer)
    sparse = await client.embed_sparse(texts, model="tiny-sparse")
    np.testing.assert_allclose(dense(sparse, reference.shape[1]), reference, atol=1e-4)
    assert all(list(v) == sorted(v) and all(w > 0 for w in v.values()) for v in sparse)
    threshold = float(np.median(reference[reference > 0]))
    above = await client.embed_sparse(texts, model="tiny-sparse", threshold=threshold)
    for kept, everything in zip(above, sparse, strict=True):
        assert kept == {i: w for i, w in everything.items() if w > np.float32(threshold)}
        assert 0 < len(kept) < len(everything)
    response = await client.inference.EmbedSparse(sparse_request(texts[:1], model="tiny-sparse"), timeout=10)
    assert response.usage.prompt_tokens == len(tokenizer.encode(texts[0]).ids)


@pytest.mark.parametrize(("threshold", "model", "code", "message"), [
    (-0.5, "tiny-sparse", grpc.StatusCode.INVALID_ARGUMENT, "threshold is -0.5"),
    (float("nan"), "tiny-sparse", grpc.StatusCode.INVALID_ARGUMENT, "threshold is nan"),
    (float("inf"), "tiny-sparse", grpc.StatusCode.INVALID_ARGUMENT, "threshold is inf"),
    (0.0, "tiny-embed", grpc.StatusCode.FAILED_PRECONDITION, "does embed, not sparse-embed"),
])
async def test_bad_sparse_requests_are_refused(client: AsyncClient, threshold: float, model: str,
                                               code: grpc.StatusCode, message: str) -> None:
    got, details = await code_of(client.embed_sparse(["hi"], model=model, threshold=threshold))
    assert (got, message in details) == (code, True), details


async def test_embed_on_a_sparse_model_is_a_wrong_task(client: AsyncClient) -> None:
    code, details = await code_of(client.embed(["hi"], model="tiny-sparse"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "does sparse-embed, not embed" in details


async def test_kserve_returns_the_sparse_weights_by_default(client: AsyncClient) -> None:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
    text = v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hello")
    response = await stub.ModelInfer(v2.ModelInferRequest(model_name="tiny-sparse", inputs=[text]), timeout=10)
    assert [(o.name, list(o.shape)) for o in response.outputs] == [("sparse_weights", [1, 30522])]
