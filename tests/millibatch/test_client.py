"""The client's new calls without a model server: the requests it builds, how it decodes answers, and one
round trip each over real gRPC to a servicer that answers from the request alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from millibatch.client import (
    AsyncClient,
    Client,
    embed_request,
    embeddings_from,
    ranked_from,
    rerank_request,
    sparse_from,
    sparse_request,
)
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from millibatch.vectors import ENCODINGS, Encoding, pack

VECTORS = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)


def test_defaults_send_exactly_the_old_request() -> None:
    assert embed_request(["a", "b"]).SerializeToString() == pb.EmbedRequest(inputs=["a", "b"]).SerializeToString()
    assert not embed_request(["a"]).HasField("dimensions")


def test_embed_request_carries_every_option() -> None:
    request = embed_request(["a"], model="m", truncate=True, normalize=False, dimensions=64, prompt_name="query",
                            truncation_direction="left", encoding="binary")
    assert (request.model, request.truncate, request.normalize, request.dimensions) == ("m", True, False, 64)
    assert request.prompt_name == "query" and request.prompt == ""
    assert request.truncation_direction == pb.TRUNCATION_DIRECTION_LEFT
    assert request.encoding == pb.VECTOR_ENCODING_BINARY
    literal = embed_request(["a"], prompt="query: ", truncation_direction="right", encoding="float16")
    assert literal.prompt == "query: " and literal.truncation_direction == pb.TRUNCATION_DIRECTION_RIGHT
    assert literal.encoding == pb.VECTOR_ENCODING_FLOAT16
    assert not embed_request(["a"]).HasField("prompt") and embed_request(["a"], prompt="").HasField("prompt")


def packed_response(vectors: np.ndarray, encoding: Encoding) -> pb.EmbedResponse:
    embeddings = [pb.Embedding(packed=data, scale=scale) for data, scale in pack(vectors, encoding)]
    return pb.EmbedResponse(embeddings=embeddings, dimensions=vectors.shape[1])


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_packed_answers_decode_to_numpy(encoding: Encoding) -> None:
    decoded = embeddings_from(packed_response(VECTORS[:, :11], encoding), encoding)
    assert isinstance(decoded, np.ndarray) and decoded.shape == (3, 11)
    if encoding == "binary":
        np.testing.assert_array_equal(decoded, VECTORS[:, :11] > 0)
    else:
        np.testing.assert_allclose(decoded, VECTORS[:, :11], atol=np.abs(VECTORS).max() / 127)


def test_float_answers_stay_lists_and_an_old_server_is_named() -> None:
    response = pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.5, -1.0])])
    assert embeddings_from(response, None) == [[0.5, -1.0]]
    with pytest.raises(ValueError, match="predates packed encodings"):
        embeddings_from(response, "int8")


def test_rerank_request_and_results() -> None:
    request = rerank_request("q", ["d0", "d1"], model="ce", top_n=1, return_documents=True, truncate=True,
                             truncation_direction="left")
    assert (request.query, list(request.documents), request.top_n) == ("q", ["d0", "d1"], 1)
    assert request.return_documents and request.model == "ce"
    assert request.truncate and request.truncation_direction == pb.TRUNCATION_DIRECTION_LEFT
    response = pb.RerankResponse(results=[pb.RerankResult(index=1, score=0.75, document="d1"),
                                          pb.RerankResult(index=0, score=0.25, document="d0")])
    assert ranked_from(response, True) == [(1, 0.75, "d1"), (0, 0.25, "d0")]
    assert ranked_from(response, False) == [(1, 0.75, None), (0, 0.25, None)]


def test_sparse_request_and_results() -> None:
    request = sparse_request(["a"], model="splade", threshold=0.25, truncate=True)
    assert (request.model, list(request.inputs), request.threshold, request.truncate) == ("splade", ["a"], 0.25, True)
    response = pb.EmbedSparseResponse(embeddings=[pb.SparseEmbedding(indices=[3, 17], values=[0.5, 1.5]),
                                                  pb.SparseEmbedding()])
    assert sparse_from(response) == [{3: 0.5, 17: 1.5}, {}]


def test_the_client_needs_no_numpy_without_a_packed_encoding() -> None:
    script = (
        "import sys\n"
        "from millibatch.client import embed_request, embeddings_from, rerank_request, sparse_request\n"
        "from millibatch.v1 import inference_pb2 as pb\n"
        "embed_request(['a'], dimensions=8, prompt_name='query', truncation_direction='left', encoding='int8')\n"
        "rerank_request('q', ['d']); sparse_request(['a'])\n"
        "embeddings_from(pb.EmbedResponse(embeddings=[pb.Embedding(values=[1.0])]), None)\n"
        "print('numpy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


class Answering(inference_pb2_grpc.InferenceServicer):
    """Answers from the request alone: vectors from VECTORS, documents scored by length, one token per
    character (its code point, weight 1)."""

    def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        vectors = VECTORS[: len(request.inputs), : request.dimensions or VECTORS.shape[1]]
        if request.encoding == pb.VECTOR_ENCODING_UNSPECIFIED:
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=v) for v in vectors.tolist()])
        encoding = pb.VectorEncoding.Name(request.encoding).removeprefix("VECTOR_ENCODING_").lower()
        return packed_response(vectors, encoding)  # type: ignore[arg-type]

    def Rerank(self, request: pb.RerankRequest, context: Any) -> pb.RerankResponse:
        order = sorted(range(len(request.documents)), key=lambda i: -len(request.documents[i]))
        results = [pb.RerankResult(index=i, score=len(request.documents[i]),
                                   document=request.documents[i] if request.return_documents else "") for i in order]
        return pb.RerankResponse(results=results[: request.top_n or None])

    def EmbedSparse(self, request: pb.EmbedSparseRequest, context: Any) -> pb.EmbedSparseResponse:
        return pb.EmbedSparseResponse(embeddings=[
            pb.SparseEmbedding(indices=sorted({ord(c) for c in text}), values=[1.0] * len(set(text)))
            for text in request.inputs
        ])


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServicer_to_server(Answering(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_sync_client_round_trips(target: str) -> None:
    with Client(target) as client:
        assert client.embed(["a"]) == [pytest.approx(VECTORS[0].tolist())]
        bits = client.embed(["a", "b"], dimensions=9, encoding="binary")
        np.testing.assert_array_equal(bits, VECTORS[:2, :9] > 0)
        assert client.rerank("q", ["a", "ccc", "bb"], top_n=2) == [(1, 3.0, None), (2, 2.0, None)]
        assert client.embed_sparse(["aba"]) == [{97: 1.0, 98: 1.0}]


@pytest.fixture
async def async_client(target: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(target) as client:
        yield client


async def test_async_client_round_trips(async_client: AsyncClient) -> None:
    halves = await async_client.embed(["a", "b", "c"], encoding="float16")
    np.testing.assert_allclose(halves, VECTORS, rtol=1e-3)
    assert await async_client.rerank("q", ["a", "bb"], return_documents=True) == [(1, 2.0, "bb"), (0, 1.0, "a")]
    assert await async_client.embed_sparse(["z"], threshold=0.5) == [{122: 1.0}]
