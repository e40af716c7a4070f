"""What V2 clients are told about a served model: metadata, configuration, output names."""

from __future__ import annotations

from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.kserve import model_config_pb2 as mc
from millibatch.service.kserve.inputs import ATTENTION_MASK, INPUT_IDS, TEXT, TEXT_PAIR, TOKEN_TYPE_IDS
from millibatch.service.registry import ServedModel

#: The one model version millibatch serves; V2 versions are strings.
VERSION = "1"
PLATFORM = "millibatch_onnxruntime"
#: Outputs returned when a request names none.
DEFAULT_OUTPUTS = {
    "embed": ("embeddings",),
    "classify": ("logits", "probabilities"),
    "token-classify": ("token_logits", "token_probabilities"),
    "sparse-embed": ("sparse_weights",),
}
#: Inputs: name, V2 datatype, config datatype, shape without the batch dimension, optional in config.
INPUTS = (
    (TEXT, "BYTES", mc.TYPE_STRING, [1]),
    (TEXT_PAIR, "BYTES", mc.TYPE_STRING, [1]),
    (INPUT_IDS, "INT64", mc.TYPE_INT64, [-1]),
    (ATTENTION_MASK, "INT64", mc.TYPE_INT64, [-1]),
    (TOKEN_TYPE_IDS, "INT64", mc.TYPE_INT64, [-1]),
)


def output_names(model: ServedModel) -> list[str]:
    """Outputs a request may ask for: the graph outputs of the model."""
    return list(model.manifest.output_names)


def output_dims(model: ServedModel) -> list[int]:
    """An output's shape without the batch dimension: [dimensions], or [-1 tokens, labels] per token."""
    dims = model.manifest.dimensions
    return [-1, dims] if model.manifest.task == "token-classify" else [dims]


def model_metadata(model: ServedModel) -> v2.ModelMetadataResponse:
    """ModelMetadata: inputs and outputs with a leading -1 batch dimension."""
    tensor = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=model.name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[tensor(name=name, datatype=datatype, shape=[-1, *dims]) for name, datatype, _, dims in INPUTS],
        outputs=[tensor(name=name, datatype="FP32", shape=[-1, *output_dims(model)])
                 for name in output_names(model)],
    )


def model_config(model: ServedModel, max_batch_rows: int, max_delay_ms: float) -> mc.ModelConfig:
    """ModelConfig: the subset of Triton's configuration that describes this model and its batcher."""
    manifest, info = model.manifest, model.engine.info
    parameters = {
        "task": manifest.task,
        "max_length": str(manifest.max_length),
        "engine": info.engine,
        "precision": info.precision,
        "labels": ",".join(manifest.labels),
    }
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=info.engine,
        max_batch_size=max_batch_rows,
        # Text and token ids are alternative layouts, so every input is optional on its own.
        input=[mc.ModelInput(name=name, data_type=dtype, dims=dims, optional=True) for name, _, dtype, dims in INPUTS],
        output=[mc.ModelOutput(name=name, data_type=mc.TYPE_FP32, dims=output_dims(model))
                for name in output_names(model)],
        instance_group=[mc.ModelInstanceGroup(
            name=model.name, count=info.instances,
            kind=mc.ModelInstanceGroup.KIND_GPU if info.device == "cuda" else mc.ModelInstanceGroup.KIND_CPU,
        )],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=round(max_delay_ms * 1000)),
        parameters={key: mc.ModelParameter(string_value=value) for key, value in parameters.items() if value},
    )
