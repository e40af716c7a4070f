"""inference.GRPCInferenceService (KServe V2 / Triton) over the same registry and batchers as millibatch.v1."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import numpy as np

import millibatch
from millibatch.batching.work import RowResult, WorkItem
from millibatch.engines.base import FloatArray
from millibatch.errors import DeadlineUnmeetable, InvalidInput, MillibatchError, ModelNotFound, Unsupported
from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.kserve import grpc_service_pb2_grpc
from millibatch.service.dataplane import DataPlane
from millibatch.service.kserve.inputs import TextInputs, request_inputs
from millibatch.service.kserve.metadata import DEFAULT_OUTPUTS, VERSION, model_config, model_metadata, output_names
from millibatch.service.kserve.statistics import ModelCounters
from millibatch.service.kserve.tensors import output_tensor
from millibatch.service.registry import ServedModel
from millibatch.service.status import failure, refuse

log = logging.getLogger("millibatch.requests")
Context: TypeAlias = grpc.aio.ServicerContext

#: Protocol extensions this server implements.
EXTENSIONS = ["model_configuration", "statistics"]
STREAM_RPC = "v2.ModelStreamInfer"
#: Repository index states (Triton's names).
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
FIXED_MODELS = ("millibatch serves the models given at start-up (--model) and loads or unloads none at run time; "
                "restart the server with the models you want")


def repository_entry(model: ServedModel, accepting: bool) -> v2.RepositoryIndexResponse.ModelIndex:
    """A model's line in the repository index."""
    entry = v2.RepositoryIndexResponse.ModelIndex(name=model.name, version=VERSION)
    if accepting and model.ready:
        entry.state = READY
    else:
        entry.state = UNAVAILABLE
        entry.reason = "server is shutting down" if not accepting else "warming up or unhealthy"
    return entry


def padded_tokens(results: list[RowResult], name: str) -> FloatArray:
    """A per-token output for a request's rows, which may have ridden in batches padded to different
    lengths: each row cut to its own tokens, then zero-padded to the request's longest row."""
    rows = [r.tokens(name) for r in results]
    out = np.zeros((len(rows), max(len(r) for r in rows), *rows[0].shape[1:]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Health, metadata, inference and statistics in the V2 protocol, over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._registry = plane.registry
        self._counters: defaultdict[str, ModelCounters] = defaultdict(ModelCounters)

    def _known_model(self, name: str, version: str) -> ServedModel:
        """A served model by its V2 name and optional version, ready or not."""
        if not name:
            raise InvalidInput("model name is required")
        model = self._registry.known(name)
        if version and version != VERSION:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; the served version is {VERSION!r}")
        return model

    async def ServerLive(self, request: v2.ServerLiveRequest, context: Context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: Context
    ) -> v2.ServerReadyResponse:
        models = self._registry.models.values()
        return v2.ServerReadyResponse(ready=self._registry.accepting and bool(models) and all(m.ready for m in models))

    async def ModelReady(self, request: v2.ModelReadyRequest, context: Context) -> v2.ModelReadyResponse:
        model = self._known_model(request.name, request.version)
        return v2.ModelReadyResponse(ready=self._registry.accepting and model.ready)

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: Context
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="millibatch", version=millibatch.__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: Context
    ) -> v2.ModelMetadataResponse:
        return model_metadata(self._known_model(request.name, request.version))

    async def ModelConfig(self, request: v2.ModelConfigRequest, context: Context) -> v2.ModelConfigResponse:
        model = self._known_model(request.name, request.version)
        settings = self.plane.settings
        config = model_config(model, settings.max_batch_rows, settings.max_delay_ms)
        return v2.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: v2.ModelStatisticsRequest, context: Context
    ) -> v2.ModelStatisticsResponse:
        names = [self._known_model(request.name, request.version).name] if request.name else list(self._registry.models)
        return v2.ModelStatisticsResponse(
            model_stats=[self._counters[name].to_proto(name, VERSION) for name in names]
        )

    async def RepositoryIndex(
        self, request: v2.RepositoryIndexRequest, context: Context
    ) -> v2.RepositoryIndexResponse:
        """The served models and their state (READY, else UNAVAILABLE with the reason); with `ready`, only
        the ready ones. millibatch has one repository, whatever its name."""
        index = [repository_entry(model, self._registry.accepting) for model in self._registry.models.values()]
        if request.ready:
            index = [entry for entry in index if entry.state == READY]
        return v2.RepositoryIndexResponse(models=index)

    async def RepositoryModelLoad(
        self, request: v2.RepositoryModelLoadRequest, context: Context
    ) -> v2.RepositoryModelLoadResponse:
        raise Unsupported(f"cannot load model {request.model_name!r}: {FIXED_MODELS}")

    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: Context
    ) -> v2.RepositoryModelUnloadResponse:
        raise Unsupported(f"cannot unload model {request.model_name!r}: {FIXED_MODELS}")

    async def ModelInfer(self, request: v2.ModelInferRequest, context: Context) -> v2.ModelInferResponse | None:
        return await self._infer(request, context, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: Context
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        """Answer each streamed request as soon as it is done (so they batch together); errors in-band,
        each request counted in the metrics with its own outcome."""
        responses: asyncio.Queue[v2.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: v2.ModelInferRequest) -> None:
            responses.put_nowait(await self._stream_answer(request, context))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                responses.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader  # surfaces a broken request stream
        finally:
            for task in (reader, *tasks):
                task.cancel()

    async def _stream_answer(
        self, request: v2.ModelInferRequest, context: Context
    ) -> v2.ModelStreamInferResponse:
        """One streamed request's answer or its error message; the stream itself stays open."""
        started = time.perf_counter()
        try:
            answered = await self._infer(request, context)  # raises, never ends the stream's call
            response = v2.ModelStreamInferResponse(infer_response=answered)
            code = "OK"
        except Exception as error:
            code, _status, details = failure(STREAM_RPC, error, context)
            failed = v2.ModelInferResponse(model_name=request.model_name, id=request.id)
            response = v2.ModelStreamInferResponse(error_message=f"[{code}] {details}", infer_response=failed)
        self.plane.count(STREAM_RPC, request.model_name, code, time.perf_counter() - started)
        return response

    def _deadline(self, request: v2.ModelInferRequest, context: Context) -> float:
        """The earlier of the gRPC deadline (or the default) and the V2 `timeout` parameter (microseconds)."""
        deadline = self.plane.deadline(context.time_remaining())
        if "timeout" not in request.parameters:
            return deadline
        parameter = request.parameters["timeout"]
        kind = parameter.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param"):
            raise InvalidInput("parameter 'timeout' must be an integer number of microseconds")
        micros = getattr(parameter, kind)
        if micros < 0:
            raise InvalidInput(f"parameter 'timeout' is {micros}; it must not be negative")
        if micros == 0:  # V2: zero means no timeout of its own
            return deadline
        return min(deadline, time.monotonic() + micros / 1e6)

    def _requested_outputs(self, request: v2.ModelInferRequest, model: ServedModel) -> list[str]:
        """Names of the outputs to return: the requested ones, else the task's default."""
        available = output_names(model)
        if not request.outputs:
            return [name for name in DEFAULT_OUTPUTS[model.manifest.task] if name in available]
        names = []
        for output in request.outputs:
            if output.name not in available:
                raise InvalidInput(f"unknown output {output.name!r}; model {model.name!r} has {', '.join(available)}")
            if "classification" in output.parameters:
                raise InvalidInput("the classification output extension is not supported; ask for 'probabilities'")
            names.append(output.name)
        return names

    async def _infer(self, request: v2.ModelInferRequest, context: Context,
                     refuse_in: Context | None = None) -> v2.ModelInferResponse | None:
        """One request's answer. With `refuse_in` (a unary call's own context), a text request that
        admission refuses for overload is ended there and None returned, as Embed does: under overload
        most calls end this way, and raising through the frames to the edge costs a visible share of the
        refusal (docs/OVERLOAD.md). Other errors, and every error of a streamed request, are raised."""
        started = time.perf_counter()
        model = self._known_model(request.model_name, request.model_version)
        model = self._registry.get(model.name)  # readiness and draining → UNAVAILABLE
        counters = self._counters[model.name]
        try:
            done = await self._compute(model, request, context, refuse_in)
        except MillibatchError:
            counters.failed(time.perf_counter() - started)
            raise
        if done is None:
            counters.failed(time.perf_counter() - started)
            return None
        response, item = done
        counters.succeeded(item, time.perf_counter() - started)
        return response

    async def _compute(
        self, model: ServedModel, request: v2.ModelInferRequest, context: Context, refuse_in: Context | None
    ) -> tuple[v2.ModelInferResponse, WorkItem] | None:
        plane = self.plane
        deadline = self._deadline(request, context)
        inputs = request_inputs(request, model.encoder)
        if isinstance(inputs, TextInputs):
            busy = plane.refusal(model, inputs.texts, deadline)  # before tokenizing
            if busy is not None:
                if refuse_in is None or isinstance(busy, DeadlineUnmeetable):
                    raise busy  # in-band on a stream; a deadline too short for any answer is logged
                refuse(refuse_in, busy)
                return None
        names = self._requested_outputs(request, model)
        if isinstance(inputs, TextInputs):
            done = await plane.compute_texts(model, inputs.texts, inputs.pairs, truncate=inputs.truncate,
                                             deadline=deadline, prechecked=True)
        else:
            done = await plane.compute_rows(model, inputs, deadline)
        results, item = done.results, done.item
        response = v2.ModelInferResponse(model_name=model.name, model_version=VERSION, id=request.id)
        per_token = model.manifest.task == "token-classify"
        for name in names:
            values = padded_tokens(results, name) if per_token else np.stack([r.get(name) for r in results])
            tensor, raw = output_tensor(name, values)
            response.outputs.append(tensor)
            response.raw_output_contents.append(raw)
        return response, item
