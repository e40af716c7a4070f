"""A small Python client over the generated stubs, sync and async.

    from millibatch.client import Client
    with Client("localhost:50051") as client:
        vectors = client.embed(["hello", "world"])
        packed = client.embed(["hello"], encoding="int8")  # a numpy array, decoded from int8 bytes

Both clients' methods throttle themselves by default: while the server refuses most of their calls with
RESOURCE_EXHAUSTED, they refuse some locally (millibatch.throttle), so that an overloaded server spends its
core on answers. `throttle=False` turns that off; `throttle=AdaptiveThrottle(...)` sets its parameters. The
generated stubs underneath (`client.inference`, `client.models`) are plain gRPC and never throttle.

Only grpcio and protobuf are needed, except for packed encodings: they decode with numpy, imported then.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import grpc

from millibatch.throttle import AdaptiveThrottle, LockedThrottle, throttled_call
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc, models_pb2, models_pb2_grpc

if TYPE_CHECKING:
    import numpy.typing as npt

    from millibatch.vectors import Encoding

#: Which end of an over-long input truncation cuts; None leaves it to the server (right).
Direction = Literal["right", "left"]


#: One reranked document: (its index in the request, its score, its text or None).
Ranked = tuple[int, float, str | None]


def _chosen_throttle(throttle: AdaptiveThrottle | bool | None) -> AdaptiveThrottle | None:
    """The client's throttle: True is the default one (millibatch.throttle), False or None none."""
    if throttle is True:
        return AdaptiveThrottle()
    return throttle or None


def _direction(direction: Direction | None) -> str:
    """The wire enum's name (the message constructors take names); None is UNSPECIFIED, the server's choice."""
    return f"TRUNCATION_DIRECTION_{(direction or 'unspecified').upper()}"


def embed_request(
    inputs: Sequence[str], *, model: str = "", truncate: bool = False, normalize: bool | None = None,
    dimensions: int | None = None, prompt_name: str | None = None, prompt: str | None = None,
    truncation_direction: Direction | None = None, encoding: Encoding | None = None,
) -> pb.EmbedRequest:
    """The EmbedRequest Client.embed sends; None leaves a setting to the server."""
    request = pb.EmbedRequest(model=model, inputs=list(inputs), truncate=truncate, prompt_name=prompt_name or "",
                              truncation_direction=_direction(truncation_direction))
    if prompt is not None:  # present even when empty: "" turns the model's default prompt off
        request.prompt = prompt
    if normalize is not None:
        request.normalize = normalize
    if dimensions is not None:
        request.dimensions = dimensions
    if encoding is not None:
        request.encoding = pb.VectorEncoding.Value(f"VECTOR_ENCODING_{encoding.upper()}")
    return request


def embeddings_from(response: pb.EmbedResponse, encoding: Encoding | None) -> list[list[float]] | npt.NDArray[Any]:
    """The vectors of an EmbedResponse: float lists, or with an `encoding` a numpy array decoded from
    the packed bytes (float32 [rows, dims]; binary: uint8 0/1 bits [rows, dims])."""
    if encoding is None:
        return [list(e.values) for e in response.embeddings]
    if any(not e.packed and e.values for e in response.embeddings):
        raise ValueError(f"asked for {encoding} vectors but the server sent floats: it predates packed encodings")
    from millibatch.vectors import unpack_rows  # numpy: only for packed encodings

    return unpack_rows([e.packed for e in response.embeddings], [e.scale for e in response.embeddings],
                       encoding, response.dimensions or None)


def rerank_request(
    query: str, documents: Sequence[str], *, model: str = "", top_n: int = 0, return_documents: bool = False,
    truncate: bool = False, truncation_direction: Direction | None = None,
) -> pb.RerankRequest:
    """The RerankRequest Client.rerank sends."""
    return pb.RerankRequest(model=model, query=query, documents=list(documents), top_n=top_n,
                            return_documents=return_documents, truncate=truncate,
                            truncation_direction=_direction(truncation_direction))


def ranked_from(response: pb.RerankResponse, return_documents: bool) -> list[Ranked]:
    """The results of a RerankResponse, best first; `document` is None unless documents were asked for."""
    return [(r.index, r.score, r.document if return_documents else None) for r in response.results]


def sparse_request(
    inputs: Sequence[str], *, model: str = "", threshold: float = 0.0, truncate: bool = False,
    truncation_direction: Direction | None = None,
) -> pb.EmbedSparseRequest:
    """The EmbedSparseRequest Client.embed_sparse sends."""
    return pb.EmbedSparseRequest(model=model, inputs=list(inputs), threshold=threshold, truncate=truncate,
                                 truncation_direction=_direction(truncation_direction))


def sparse_from(response: pb.EmbedSparseResponse) -> list[dict[int, float]]:
    """One {token id: weight} dict per input, in index order."""
    return [dict(zip(e.indices, e.values, strict=True)) for e in response.embeddings]


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
    """Blocking client. `timeout` (seconds) becomes each call's gRPC deadline. `throttle`: see the module."""

    def __init__(self, target: str = "localhost:50051", *, timeout: float | None = 10.0,
                 channel: grpc.Channel | None = None, metadata: Sequence[tuple[str, str]] = (),
                 throttle: AdaptiveThrottle | bool | None = True) -> None:
        self.channel = channel or grpc.insecure_channel(target)
        chosen = _chosen_throttle(throttle)  # refuse calls here while the server refuses most (millibatch.throttle)
        self._throttle = None if chosen is None else LockedThrottle(chosen)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)

    def _call(self, method: Any, request: Any) -> Any:
        """One unary call with this client's deadline and metadata, through its throttle if it has one."""
        if self._throttle is None:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        return self._throttle.call(method, request, timeout=self.timeout, metadata=self.metadata)

    @overload
    def embed(self, inputs: Sequence[str], *, model: str = ..., truncate: bool = ..., normalize: bool | None = ...,
              dimensions: int | None = ..., prompt_name: str | None = ..., prompt: str | None = ...,
              truncation_direction: Direction | None = ..., encoding: None = ...) -> list[list[float]]: ...

    @overload
    def embed(self, inputs: Sequence[str], *, model: str = ..., truncate: bool = ..., normalize: bool | None = ...,
              dimensions: int | None = ..., prompt_name: str | None = ..., prompt: str | None = ...,
              truncation_direction: Direction | None = ..., encoding: Encoding) -> npt.NDArray[Any]: ...

    def embed(self, inputs: Sequence[str], *, model: str = "", truncate: bool = False, normalize: bool | None = None,
              dimensions: int | None = None, prompt_name: str | None = None, prompt: str | None = None,
              truncation_direction: Direction | None = None,
              encoding: Encoding | None = None) -> list[list[float]] | npt.NDArray[Any]:
        """One vector per input; with an `encoding` a numpy array decoded from packed bytes (embeddings_from).
        `dimensions` keeps a prefix (Matryoshka); `prompt_name` or `prompt` is prepended to every input
        (neither: the model's default prompt; `prompt=""`: none)."""
        request = embed_request(inputs, model=model, truncate=truncate, normalize=normalize, dimensions=dimensions,
                                prompt_name=prompt_name, prompt=prompt, truncation_direction=truncation_direction,
                                encoding=encoding)
        response = self._call(self.inference.Embed, request)
        return embeddings_from(response, encoding)

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int = 0, return_documents: bool = False,
               model: str = "", truncate: bool = False,
               truncation_direction: Direction | None = None) -> list[Ranked]:
        """(index, score, document or None) per document, best first; `top_n` 0 = all of them."""
        request = rerank_request(query, documents, model=model, top_n=top_n, return_documents=return_documents,
                                 truncate=truncate, truncation_direction=truncation_direction)
        response = self._call(self.inference.Rerank, request)
        return ranked_from(response, return_documents)

    def embed_sparse(self, inputs: Sequence[str], *, threshold: float = 0.0, model: str = "", truncate: bool = False,
                     truncation_direction: Direction | None = None) -> list[dict[int, float]]:
        """One {token id: weight} dict per input (SPLADE); weights at or below `threshold` are left out."""
        request = sparse_request(inputs, model=model, threshold=threshold, truncate=truncate,
                                 truncation_direction=truncation_direction)
        response = self._call(self.inference.EmbedSparse, request)
        return sparse_from(response)

    def classify(self, inputs: Sequence[str], *, model: str = "", text_pairs: Sequence[str] | None = None,
                 top_k: int = 0, raw_scores: bool = False, truncate: bool = False) -> list[list[tuple[str, float]]]:
        """(label, score) lists per input, best first."""
        response = self._call(self.inference.Classify,
                              _classify_request(inputs, model, text_pairs, top_k, raw_scores, truncate))
        return _labels(response)

    def extract_entities(self, inputs: Sequence[str], *, model: str = "", aggregation: Aggregation | None = None,
                         ignore_labels: Sequence[str] | None = None, truncate: bool = False) -> list[list[pb.Entity]]:
        """Entities per input (label, score, start, end, text); `aggregation` None = the server's (simple),
        `ignore_labels` None = ["O"]."""
        response = self._call(self.inference.ExtractEntities,
                              _entities_request(inputs, model, aggregation, ignore_labels, truncate))
        return [list(r.entities) for r in response.results]

    def tokenize(self, inputs: Sequence[str], *, model: str = "") -> pb.TokenizeResponse:
        return self._call(self.inference.Tokenize, pb.TokenizeRequest(model=model, inputs=list(inputs)))

    def list_models(self) -> models_pb2.ListModelsResponse:
        return self._call(self.models.ListModels, models_pb2.ListModelsRequest())

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client (grpc.aio); same methods as Client, awaited."""

    def __init__(self, target: str = "localhost:50051", *, timeout: float | None = 10.0,
                 channel: grpc.aio.Channel | None = None, metadata: Sequence[tuple[str, str]] = (),
                 throttle: AdaptiveThrottle | bool | None = True) -> None:
        self.channel = channel or grpc.aio.insecure_channel(target)
        self._throttle = _chosen_throttle(throttle)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)

    async def _call(self, method: Any, request: Any) -> Any:
        """Client._call, awaited."""
        if self._throttle is None:
            return await method(request, timeout=self.timeout, metadata=self.metadata)
        return await throttled_call(self._throttle, method, request, timeout=self.timeout, metadata=self.metadata)

    @overload
    async def embed(self, inputs: Sequence[str], *, model: str = ..., truncate: bool = ...,
                    normalize: bool | None = ..., dimensions: int | None = ..., prompt_name: str | None = ...,
                    prompt: str | None = ..., truncation_direction: Direction | None = ...,
                    encoding: None = ...) -> list[list[float]]: ...

    @overload
    async def embed(self, inputs: Sequence[str], *, model: str = ..., truncate: bool = ...,
                    normalize: bool | None = ..., dimensions: int | None = ..., prompt_name: str | None = ...,
                    prompt: str | None = ..., truncation_direction: Direction | None = ...,
                    encoding: Encoding) -> npt.NDArray[Any]: ...

    async def embed(self, inputs: Sequence[str], *, model: str = "", truncate: bool = False,
                    normalize: bool | None = None, dimensions: int | None = None, prompt_name: str | None = None,
                    prompt: str | None = None, truncation_direction: Direction | None = None,
                    encoding: Encoding | None = None) -> list[list[float]] | npt.NDArray[Any]:
        """Client.embed, awaited."""
        request = embed_request(inputs, model=model, truncate=truncate, normalize=normalize, dimensions=dimensions,
                                prompt_name=prompt_name, prompt=prompt, truncation_direction=truncation_direction,
                                encoding=encoding)
        response = await self._call(self.inference.Embed, request)
        return embeddings_from(response, encoding)

    async def rerank(self, query: str, documents: Sequence[str], *, top_n: int = 0, return_documents: bool = False,
                     model: str = "", truncate: bool = False,
                     truncation_direction: Direction | None = None) -> list[Ranked]:
        """Client.rerank, awaited."""
        request = rerank_request(query, documents, model=model, top_n=top_n, return_documents=return_documents,
                                 truncate=truncate, truncation_direction=truncation_direction)
        response = await self._call(self.inference.Rerank, request)
        return ranked_from(response, return_documents)

    async def embed_sparse(self, inputs: Sequence[str], *, threshold: float = 0.0, model: str = "",
                           truncate: bool = False,
                           truncation_direction: Direction | None = None) -> list[dict[int, float]]:
        """Client.embed_sparse, awaited."""
        request = sparse_request(inputs, model=model, threshold=threshold, truncate=truncate,
                                 truncation_direction=truncation_direction)
        response = await self._call(self.inference.EmbedSparse, request)
        return sparse_from(response)

    async def classify(self, inputs: Sequence[str], *, model: str = "", text_pairs: Sequence[str] | None = None,
                       top_k: int = 0, raw_scores: bool = False,
                       truncate: bool = False) -> list[list[tuple[str, float]]]:
        response = await self._call(self.inference.Classify,
                                    _classify_request(inputs, model, text_pairs, top_k, raw_scores, truncate))
        return _labels(response)

    async def extract_entities(self, inputs: Sequence[str], *, model: str = "",
                               aggregation: Aggregation | None = None, ignore_labels: Sequence[str] | None = None,
                               truncate: bool = False) -> list[list[pb.Entity]]:
        response = await self._call(self.inference.ExtractEntities,
                                    _entities_request(inputs, model, aggregation, ignore_labels, truncate))
        return [list(r.entities) for r in response.results]

    async def tokenize(self, inputs: Sequence[str], *, model: str = "") -> pb.TokenizeResponse:
        return await self._call(self.inference.Tokenize, pb.TokenizeRequest(model=model, inputs=list(inputs)))

    async def list_models(self) -> models_pb2.ListModelsResponse:
        return await self._call(self.models.ListModels, models_pb2.ListModelsRequest())

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
