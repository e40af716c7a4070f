"""millibatch.v1.Inference: validate, tokenize, queue, answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tokenizers import Encoding

from millibatch.batching.work import RowResult, WorkItem
from millibatch.errors import InvalidInput
from millibatch.service.entities import DEFAULT_IGNORE_LABELS, STRATEGIES, Entity, Strategy, extract_entities
from millibatch.service.ledger import CallLedger
from millibatch.service.metrics import Metrics
from millibatch.service.registry import ModelRegistry, ServedModel
from millibatch.service.status import RequestRecorder, grpc_errors
from millibatch.service.tokenization import to_rows
from millibatch.settings import Settings
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


def call_deadline(context: grpc.aio.ServicerContext, settings: Settings) -> float:
    """The call's deadline as an absolute loop time: the gRPC deadline, else the default."""
    remaining = context.time_remaining()
    if remaining is None:
        remaining = settings.default_deadline_ms / 1000.0
    return asyncio.get_running_loop().time() + remaining


def micros(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


@dataclass(frozen=True)
class Computed:
    """A request after the batcher: per-row results in input order and what the response reports."""

    results: list[RowResult]
    item: WorkItem
    usage: pb.Usage
    tokenize_seconds: float
    #: The tokenizer's encodings of the inputs (offsets, word ids), in input order.
    encodings: list[Encoding]


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Embed, Classify, ExtractEntities and Tokenize over the model registry."""

    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics | None = None,
                 ledger: CallLedger | None = None) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        #: Read by `@grpc_errors` to account for every accepted call.
        self.ledger = ledger
        #: Read by `@grpc_errors` to count every outcome.
        self.on_request_done: RequestRecorder | None = metrics.recorder(registry) if metrics else None

    def _check_count(self, inputs: Sequence[str]) -> None:
        if not inputs:
            raise InvalidInput("inputs is empty; send at least one text")
        limit = self._settings.max_inputs_per_request
        if len(inputs) > limit:
            raise InvalidInput(f"{len(inputs)} inputs in one request; the limit is {limit}")

    async def _run(
        self, model: ServedModel, inputs: Sequence[str], pairs: Sequence[str], truncate: bool,
        context: grpc.aio.ServicerContext,
    ) -> Computed:
        """Tokenize and batch a request."""
        self._check_count(inputs)
        deadline = call_deadline(context, self._settings)
        started = time.perf_counter()
        encodings = await model.encoder.encode_async(inputs, pairs, truncate=truncate)
        tokenize_seconds = time.perf_counter() - started
        rows = to_rows(encodings)
        results, item = await model.compute(rows, deadline, self._settings.max_tokens_per_request)
        if self._metrics is not None:
            self._metrics.work_done(model.name, item, tokenize_seconds)
        tokens = sum(r.length for r in rows)
        return Computed(results, item, pb.Usage(prompt_tokens=tokens, total_tokens=tokens), tokenize_seconds,
                        encodings)

    def _timing(self, item: WorkItem, tokenize_seconds: float, started: float) -> pb.Timing:
        return pb.Timing(
            queue_us=micros(item.queue_seconds),
            tokenize_us=micros(tokenize_seconds),
            inference_us=micros(item.inference_seconds),
            total_us=micros(time.perf_counter() - started),
            batches=len(set(item.batch_ids)),
        )

    @grpc_errors("Embed")
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter()
        model = self._registry.get(request.model, task="embed")
        normalize = request.normalize if request.HasField("normalize") else model.manifest.normalize
        output = "embeddings" if normalize else "pooled"
        done = await self._run(model, request.inputs, (), request.truncate, context)
        vectors = np.stack([r.get(output) for r in done.results]).tolist()
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in vectors],
            model=model.name,
            usage=done.usage,
            timing=self._timing(done.item, done.tokenize_seconds, started),
        )

    @grpc_errors("Classify")
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        started = time.perf_counter()
        model = self._registry.get(request.model, task="classify")
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
        return pb.ClassifyResponse(
            results=answers, model=model.name, usage=done.usage,
            timing=self._timing(done.item, done.tokenize_seconds, started),
        )

    @grpc_errors("ExtractEntities")
    async def ExtractEntities(
        self, request: pb.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtractEntitiesResponse:
        started = time.perf_counter()
        model = self._registry.get(request.model, task="token-classify")
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

        found = gather() if done.usage.total_tokens <= INLINE_ENTITY_TOKENS else await asyncio.to_thread(gather)
        return pb.ExtractEntitiesResponse(
            results=[
                pb.Entities(entities=[
                    pb.Entity(label=e.label, score=e.score, start=e.start, end=e.end, text=e.text) for e in entities
                ])
                for entities in found
            ],
            model=model.name,
            usage=done.usage,
            timing=self._timing(done.item, done.tokenize_seconds, started),
        )

    @grpc_errors("Tokenize")
    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        model = self._registry.get(request.model)
        self._check_count(request.inputs)
        special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        encodings = await model.encoder.encode_async(
            request.inputs, request.text_pairs, truncate=request.truncate, add_special_tokens=special
        )
        results = [
            pb.Tokens(
                ids=e.ids,
                tokens=e.tokens,
                offsets=[pb.Offset(start=s, end=t) for s, t in e.offsets],
                type_ids=e.type_ids,
            )
            for e in encodings
        ]
        tokens = sum(len(e.ids) for e in encodings)
        return pb.TokenizeResponse(
            results=results, model=model.name, usage=pb.Usage(prompt_tokens=tokens, total_tokens=tokens)
        )
