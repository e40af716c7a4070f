"""millibatch.v1.Models: what is served and how."""

from __future__ import annotations

import grpc

from millibatch.errors import ModelNotFound
from millibatch.service.dataplane import DataPlane
from millibatch.service.registry import ServedModel
from millibatch.v1 import models_pb2 as pb
from millibatch.v1 import models_pb2_grpc


def model_info(model: ServedModel) -> pb.ModelInfo:
    """The Models service's view of a served model."""
    manifest, info = model.manifest, model.engine.info
    counters = model.batcher.counters
    return pb.ModelInfo(
        name=model.name,
        task=manifest.task,
        dimensions=manifest.dimensions,
        max_length=manifest.max_length,
        labels=manifest.labels,
        precision=info.precision,
        engine=info.engine,
        device=info.device,
        engine_reason=info.reason,
        instances=info.instances,
        pooling=manifest.pooling,
        normalize=manifest.normalize,
        ready=model.ready,
        cost_model=model.batcher.cost_model.coefficients,
        source_hash=manifest.source_hash,
        prompts=manifest.prompts,
        default_prompt_name=manifest.default_prompt_name,
        batching=pb.BatchingStats(
            batches=counters.batches, rows=counters.rows, real_tokens=counters.real_tokens,
            padded_tokens=counters.padded_tokens, shed=counters.requests_shed, rejected=counters.requests_rejected,
            engine_seconds=counters.engine_seconds,
            policy=model.batcher.limits.policy,
        ),
    )


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    """ListModels and DescribeModel; answers even while models warm up."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._registry = plane.registry

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_info(m) for m in self._registry.models.values()],
            default_model=self._registry.default,
        )

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        model = self._registry.models.get(request.model or self._registry.default)
        if model is None:
            raise ModelNotFound(f"model {request.model!r} is not served here")
        return model_info(model)
