"""A small Python client over the generated stubs, sync and async.

    from millibatch.client import Client
    with Client("localhost:50051") as client:
        vectors = client.embed(["hello", "world"])
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import grpc

from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc, models_pb2, models_pb2_grpc


def _embed_request(inputs: Sequence[str], model: str, truncate: bool, normalize: bool | None) -> pb.EmbedRequest:
    request = pb.EmbedRequest(model=model, inputs=list(inputs), truncate=truncate)
    if normalize is not None:
        request.normalize = normalize
    return request


def _classify_request(
    inputs: Sequence[str], model: str, text_pairs: Sequence[str] | None, top_k: int, raw_scores: bool, truncate: bool
) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model, inputs=list(inputs), text_pairs=list(text_pairs or ()),
                              top_k=top_k, raw_scores=raw_scores, truncate=truncate)


def _labels(response: pb.ClassifyResponse) -> list[list[tuple[str, float]]]:
    return [[(s.label, s.score) for s in result.labels] for result in response.results]


Aggregation = Literal["none", "simple", "first", "average", "max"]


def _entities_request(inputs: Sequence[str], model: str, aggregation: Aggregation | None,
                      ignore_labels: Sequence[str] | None, truncate: bool) -> pb.ExtractEntitiesRequest:
    request = pb.ExtractEntitiesRequest(model=model, inputs=list(inputs), truncate=truncate)
    if aggregation is not None:
        request.aggregation_strategy = pb.AggregationStrategy.Value(f"AGGREGATION_STRATEGY_{aggregation.upper()}")
    if ignore_labels is not None:  # present even when empty: an empty list keeps every label
        request.ignore_labels.SetInParent()
        request.ignore_labels.labels.extend(ignore_labels)
    return request


class Client:
    """Blocking client. `timeout` (seconds) becomes each call's gRPC deadline."""

    def __init__(self, target: str = "localhost:50051", *, timeout: float | None = 10.0,
                 channel: grpc.Channel | None = None, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.channel = channel or grpc.insecure_channel(target)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)

    def embed(self, inputs: Sequence[str], *, model: str = "", truncate: bool = False,
              normalize: bool | None = None) -> list[list[float]]:
        """One vector per input."""
        response = self.inference.Embed(_embed_request(inputs, model, truncate, normalize),
                                        timeout=self.timeout, metadata=self.metadata)
        return [list(e.values) for e in response.embeddings]

    def classify(self, inputs: Sequence[str], *, model: str = "", text_pairs: Sequence[str] | None = None,
                 top_k: int = 0, raw_scores: bool = False, truncate: bool = False) -> list[list[tuple[str, float]]]:
        """(label, score) lists per input, best first."""
        response = self.inference.Classify(
            _classify_request(inputs, model, text_pairs, top_k, raw_scores, truncate),
            timeout=self.timeout, metadata=self.metadata)
        return _labels(response)

    def extract_entities(self, inputs: Sequence[str], *, model: str = "", aggregation: Aggregation | None = None,
                         ignore_labels: Sequence[str] | None = None, truncate: bool = False) -> list[list[pb.Entity]]:
        """Entities per input (label, score, start, end, text); `aggregation` None = the server's (simple),
        `ignore_labels` None = ["O"]."""
        response = self.inference.ExtractEntities(
            _entities_request(inputs, model, aggregation, ignore_labels, truncate),
            timeout=self.timeout, metadata=self.metadata)
        return [list(r.entities) for r in response.results]

    def tokenize(self, inputs: Sequence[str], *, model: str = "") -> pb.TokenizeResponse:
        return self.inference.Tokenize(pb.TokenizeRequest(model=model, inputs=list(inputs)),
                                       timeout=self.timeout, metadata=self.metadata)

    def list_models(self) -> models_pb2.ListModelsResponse:
        return self.models.ListModels(models_pb2.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client (grpc.aio); same methods as Client, awaited."""

    def __init__(self, target: str = "localhost:50051", *, timeout: float | None = 10.0,
                 channel: grpc.aio.Channel | None = None, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.channel = channel or grpc.aio.insecure_channel(target)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)

    async def embed(self, inputs: Sequence[str], *, model: str = "", truncate: bool = False,
                    normalize: bool | None = None) -> list[list[float]]:
        response = await self.inference.Embed(_embed_request(inputs, model, truncate, normalize),
                                              timeout=self.timeout, metadata=self.metadata)
        return [list(e.values) for e in response.embeddings]

    async def classify(self, inputs: Sequence[str], *, model: str = "", text_pairs: Sequence[str] | None = None,
                       top_k: int = 0, raw_scores: bool = False,
                       truncate: bool = False) -> list[list[tuple[str, float]]]:
        response = await self.inference.Classify(
            _classify_request(inputs, model, text_pairs, top_k, raw_scores, truncate),
            timeout=self.timeout, metadata=self.metadata)
        return _labels(response)

    async def extract_entities(self, inputs: Sequence[str], *, model: str = "",
                               aggregation: Aggregation | None = None, ignore_labels: Sequence[str] | None = None,
                               truncate: bool = False) -> list[list[pb.Entity]]:
        response = await self.inference.ExtractEntities(
            _entities_request(inputs, model, aggregation, ignore_labels, truncate),
            timeout=self.timeout, metadata=self.metadata)
        return [list(r.entities) for r in response.results]

    async def tokenize(self, inputs: Sequence[str], *, model: str = "") -> pb.TokenizeResponse:
        return await self.inference.Tokenize(pb.TokenizeRequest(model=model, inputs=list(inputs)),
                                             timeout=self.timeout, metadata=self.metadata)

    async def list_models(self) -> models_pb2.ListModelsResponse:
        return await self.models.ListModels(models_pb2.ListModelsRequest(), timeout=self.timeout,
                                            metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
