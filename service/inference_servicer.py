"""millibatch.v1.Inference: protobuf in, data-plane calls, protobuf out."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

import grpc
import numpy as np

from millibatch.errors import DeadlineUnmeetable, InvalidInput
from millibatch.service.dataplane import Computed, DataPlane
from millibatch.service.edge import Gate
from millibatch.service.embeddings import EmbedOptions, embed_texts
from millibatch.service.entities import DEFAULT_IGNORE_LABELS, STRATEGIES, Entity, Strategy, extract_entities
from millibatch.service.registry import ServedModel
from millibatch.service.rerank import rerank
from millibatch.service.sparse_embed import embed_sparse
from millibatch.service.status import refuse
from millibatch.service.tokenization import Direction
from millibatch.service.vector_wire import embeddings_field
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from millibatch.vectors import ENCODINGS, Encoding, pack

#: Wire enum (AGGREGATION_STRATEGY_<NAME>) → aggregation strategy; UNSPECIFIED gets SIMPLE, what most
#: transformers NER examples use.
WIRE_STRATEGIES: dict[int, Strategy] = {
    pb.AggregationStrategy.Value(f"AGGREGATION_STRATEGY_{name.upper()}"): name for name in STRATEGIES
} | {pb.AGGREGATION_STRATEGY_UNSPECIFIED: "simple"}
#: Wire enum → truncation direction; UNSPECIFIED gets RIGHT (keep the start), what tokenizers do.
WIRE_DIRECTIONS: dict[int, Direction] = {
    pb.TRUNCATION_DIRECTION_UNSPECIFIED: "right",
    pb.TRUNCATION_DIRECTION_RIGHT: "right",
    pb.TRUNCATION_DIRECTION_LEFT: "left",
}
#: Wire enum → packed vector encoding; UNSPECIFIED (None) sends `values` as repeated floats.
WIRE_ENCODINGS: dict[int, Encoding | None] = {
    pb.VectorEncoding.Value(f"VECTOR_ENCODING_{name.upper()}"): name for name in ENCODINGS
} | {pb.VECTOR_ENCODING_UNSPECIFIED: None}
#: The task of the model each compute method needs: their calls may be refused before their request is
#: read (service.edge's gates).
GATED_TASKS = {"Embed": "embed", "Rerank": "classify", "Classify": "classify", "EmbedSparse": "sparse-embed",
               "ExtractEntities": "token-classify"}
#: Above this many tokens in a request, entities are gathered in a thread (about 3 µs a token) so the
#: event loop keeps answering other calls meanwhile.
INLINE_ENTITY_TOKENS = 4096


def micros(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


def usage(tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=tokens, total_tokens=tokens)


def direction(value: int) -> Direction:
    """The truncation direction of a request's enum value."""
    found = WIRE_DIRECTIONS.get(value)
    if found is None:  # proto3 enums are open: a newer client may send a value this server lacks
        raise InvalidInput(f"unknown truncation_direction {value}; use TRUNCATION_DIRECTION_RIGHT or _LEFT")
    return found


def encoding(value: int) -> Encoding | None:
    """The packed encoding of a request's enum value (None: repeated floats)."""
    if value not in WIRE_ENCODINGS:
        raise InvalidInput(f"unknown encoding {value}; use one of VECTOR_ENCODING_{{FLOAT32, FLOAT16, INT8, BINARY}}")
    return WIRE_ENCODINGS[value]


def timing(done: Computed, started: float) -> pb.Timing:
    """Where the call's time went, for the response."""
    item = done.item
    return pb.Timing(
        queue_us=micros(item.queue_seconds),
        tokenize_us=micros(done.tokenize_seconds),
        inference_us=micros(item.inference_seconds),
        total_us=micros(time.perf_counter() - started),
        batches=len(set(item.batch_ids)),
    )


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Embed, Rerank, EmbedSparse, Classify, ExtractEntities and Tokenize over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @property
    def gates(self) -> dict[str, Gate]:
        """For service.edge: each compute method's gate, refusing a call before its request is read."""
        return {method: functools.partial(self.refuse_unread, task) for method, task in GATED_TASKS.items()}

    def refuse_unread(self, task: str, context: grpc.aio.ServicerContext) -> str | None:
        """End a call for `task` before its request is read when the only model it can be for has too
        much queued for even the least request to meet the call's deadline; the model's name if it was
        refused. With several models, the request must be read to know which one it names."""
        plane = self.plane
        model = plane.sole_model(task)
        if model is None:
            return None
        refused = plane.refusal_unread(model, plane.deadline(context.time_remaining()))
        if refused is None:
            return None
        refuse(context, refused)
        return model.name

    async def _run(self, model: ServedModel, inputs: Sequence[str], pairs: Sequence[str], truncate: bool,
                   context: grpc.aio.ServicerContext) -> Computed:
        """Tokenize and batch a request under its gRPC deadline."""
        plane = self.plane
        return await plane.compute_texts(model, inputs, pairs, truncate=truncate,
                                         deadline=plane.deadline(context.time_remaining()))

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse | None:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="embed")
        plane = self.plane
        deadline = plane.deadline(context.time_remaining())
        # Under overload most calls end here: refused before anything else of the request is read.
        busy = plane.refusal(model, request.inputs, deadline)
        if busy is not None:
            if isinstance(busy, DeadlineUnmeetable):
                raise busy  # a deadline too short for any answer: logged and counted by the edge
            refuse(context, busy)
            return None
        packed = encoding(request.encoding)
        options = EmbedOptions(
            truncate=request.truncate,
            normalize=request.normalize if request.HasField("normalize") else None,
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            prompt_name=request.prompt_name,
            prompt=request.prompt if request.HasField("prompt") else None,
            direction=direction(request.truncation_direction),
        )
        embedded = await embed_texts(plane, model, request.inputs, options, deadline, prechecked=True)
        done = embedded.done
        response = pb.EmbedResponse(model=model.name, usage=usage(done.tokens), timing=timing(done, started),
                                    dimensions=embedded.dimensions)
        if packed is None:  # float values: written as wire bytes, not float by float
            response.MergeFromString(embeddings_field(embedded.vectors))
        else:
            response.embeddings.extend(
                pb.Embedding(packed=data, scale=scale) for data, scale in pack(embedded.vectors, packed))
        return response

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="classify")
        plane = self.plane
        reranked = await rerank(plane, model, request.query, request.documents, top_n=request.top_n,
                                truncate=request.truncate, direction=direction(request.truncation_direction),
                                deadline=plane.deadline(context.time_remaining()))
        documents = request.documents if request.return_documents else None
        results = [
            pb.RerankResult(index=r.index, score=r.score, document=documents[r.index] if documents else "")
            for r in reranked.ranked
        ]
        done = reranked.done
        return pb.RerankResponse(results=results, model=model.name, usage=usage(done.tokens),
                                 timing=timing(done, started))

    async def EmbedSparse(
        self, request: pb.EmbedSparseRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedSparseResponse:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="sparse-embed")
        plane = self.plane
        embedded = await embed_sparse(plane, model, request.inputs, threshold=request.threshold,
                                      truncate=request.truncate, direction=direction(request.truncation_direction),
                                      deadline=plane.deadline(context.time_remaining()))
        done = embedded.done
        return pb.EmbedSparseResponse(
            embeddings=[pb.SparseEmbedding(indices=ids.tolist(), values=weights.tolist())
                        for ids, weights in embedded.vectors],
            model=model.name,
            usage=usage(done.tokens),
            timing=timing(done, started),
        )

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="classify")
        output = "logits" if request.raw_scores else "probabilities"
        done = await self._run(model, request.inputs, request.text_pairs, request.truncate, context)
        labels = model.manifest.labels
        top_k = request.top_k or len(labels)
        answers = []
        for result in done.results:
            scores = result.get(output)
            best = np.argsort(-scores, kind="stable")[:top_k]
            answers.append(pb.Classification(labels=[
                pb.LabelScore(label=labels[i], score=float(scores[i]), index=int(i)) for i in best
            ]))
        return pb.ClassifyResponse(results=answers, model=model.name, usage=usage(done.tokens),
                                   timing=timing(done, started))

    async def ExtractEntities(
        self, request: pb.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtractEntitiesResponse:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="token-classify")
        strategy = WIRE_STRATEGIES.get(request.aggregation_strategy)
        if strategy is None:  # proto3 enums are open: a newer client may send a value this server lacks
            raise InvalidInput(f"unknown aggregation_strategy {request.aggregation_strategy}")
        ignore = (
            list(request.ignore_labels.labels) if request.HasField("ignore_labels") else list(DEFAULT_IGNORE_LABELS)
        )
        done = await self._run(model, request.inputs, (), request.truncate, context)
        labels = model.manifest.labels

        def gather() -> list[list[Entity]]:
            return [
                extract_entities(
                    text, result.tokens("token_probabilities"), labels, offsets=encoding.offsets,
                    word_ids=encoding.word_ids, special_tokens_mask=encoding.special_tokens_mask,
                    strategy=strategy, ignore_labels=ignore,
                )
                for text, result, encoding in zip(request.inputs, done.results, done.encodings, strict=True)
            ]

        found = gather() if done.tokens <= INLINE_ENTITY_TOKENS else await asyncio.to_thread(gather)
        return pb.ExtractEntitiesResponse(
            results=[
                pb.Entities(entities=[
                    pb.Entity(label=e.label, score=e.score, start=e.start, end=e.end, text=e.text) for e in entities
                ])
                for entities in found
            ],
            model=model.name,
            usage=usage(done.tokens),
            timing=timing(done, started),
        )

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        model = self.plane.model(request.model)
        special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        encodings = await self.plane.tokenize(model, request.inputs, request.text_pairs, truncate=request.truncate,
                                              add_special_tokens=special)
        results = [
            pb.Tokens(
                ids=e.ids,
                tokens=e.tokens,
                offsets=[pb.Offset(start=s, end=t) for s, t in e.offsets],
                type_ids=e.type_ids,
            )
            for e in encodings
        ]
        return pb.TokenizeResponse(results=results, model=model.name,
                                   usage=usage(sum(len(e.ids) for e in encodings)))
