"""millibatch.v1.Inference: validate, tokenize, queue, answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import numpy as np

from batching.work import RowResult, WorkItem
from millibatch.errors import InvalidInput
from millibatch.settings import Settings
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from service.ledger import CallLedger
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel
from service.status import RequestRecorder, grpc_errors
from service.tokenization import to_rows


def call_deadline(context: grpc.aio.ServicerContext, settings: Settings) -> float:
    """The call's deadline as an absolute loop time: the gRPC deadline, else the default."""
    remaining = context.time_remaining()
    if remaining is None:
        remaining = settings.default_deadline_ms / 1000.0
    return asyncio.get_running_loop().time() + remaining


def micros(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Embed, Classify and Tokenize over the model registry."""

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
    ) -> tuple[list[RowResult], WorkItem, pb.Usage, float]:
        """Tokenize and batch a request; returns per-row results, the work item, usage and tokenize time."""
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
        return results, item, pb.Usage(prompt_tokens=tokens, total_tokens=tokens), tokenize_seconds

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
        results, item, usage, tokenize_seconds = await self._run(
            model, request.inputs, (), request.truncate, context
        )
        vectors = np.stack([r.get(output) for r in results]).tolist()
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in vectors],
            model=model.name,
            usage=usage,
            timing=self._timing(item, tokenize_seconds, started),
        )

    @grpc_errors("Classify")
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        started = time.perf_counter()
        model = self._registry.get(request.model, task="classify")
        output = "logits" if request.raw_scores else "probabilities"
        results, item, usage, tokenize_seconds = await self._run(
            model, request.inputs, request.text_pairs, request.truncate, context
        )
        labels = model.manifest.labels
        top_k = request.top_k or len(labels)
        answers = []
        for result in results:
            scores = result.get(output)
            best = np.argsort(-scores, kind="stable")[:top_k]
            answers.append(pb.Classification(labels=[
                pb.LabelScore(label=labels[i], score=float(scores[i]), index=int(i)) for i in best
            ]))
        return pb.ClassifyResponse(
            results=answers, model=model.name, usage=usage, timing=self._timing(item, tokenize_seconds, started)
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
