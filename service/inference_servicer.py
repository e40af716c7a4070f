"""millibatch.v1.Inference: protobuf in, data-plane calls, protobuf out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import numpy as np

from millibatch.errors import InvalidInput
from millibatch.service.dataplane import Computed, DataPlane
from millibatch.service.entities import DEFAULT_IGNORE_LABELS, STRATEGIES, Entity, Strategy, extract_entities
from millibatch.service.registry import ServedModel
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc

#: Wire enum (AGGREGATION_STRATEGY_<NAME>) → aggregation strategy; UNSPECIFIED gets SIMPLE, what most
#: transformers NER examples use.
WIRE_STRATEGIES: dict[int, Strategy] = {
    pb.AggregationStrategy.Value(f"AGGREGATION_STRATEGY_{name.upper()}"): name for name in STRATEGIES
} | {pb.AGGREGATION_STRATEGY_UNSPECIFIED: "simple"}
#: Above this many tokens in a request, entities are gathered in a thread (about 3 µs a token) so the
#: event loop keeps answering other calls meanwhile.
INLINE_ENTITY_TOKENS = 4096


def micros(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


def usage(tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=tokens, total_tokens=tokens)


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
    """Embed, Classify, ExtractEntities and Tokenize over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _run(self, model: ServedModel, inputs: Sequence[str], pairs: Sequence[str], truncate: bool,
                   context: grpc.aio.ServicerContext) -> Computed:
        """Tokenize and batch a request under its gRPC deadline."""
        plane = self.plane
        return await plane.compute_texts(model, inputs, pairs, truncate=truncate,
                                         deadline=plane.deadline(context.time_remaining()))

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter()
        model = self.plane.model(request.model, task="embed")
        normalize = request.normalize if request.HasField("normalize") else model.manifest.normalize
        output = "embeddings" if normalize else "pooled"
        done = await self._run(model, request.inputs, (), request.truncate, context)
        vectors = np.stack([r.get(output) for r in done.results]).tolist()
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in vectors],
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
