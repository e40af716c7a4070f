"""V2 requests a client library would never build, sent with millibatch's own stubs to the real server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from millibatch.client import AsyncClient
from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.kserve import grpc_service_pb2_grpc
from millibatch.service.kserve.tensors import encode_bytes_elements
from tests.helpers import running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")
Tensor = v2.ModelInferRequest.InferInputTensor


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tiny_embed_dir: Path) -> AsyncIterator[Any]:
    async with running_server([tiny_embed_dir], max_inputs_per_request=4) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def stub(server: Any) -> AsyncIterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def text_request(texts: list[str], shape: list[int] | None = None) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(
        model_name="tiny-embed",
        inputs=[Tensor(name="text", datatype="BYTES", shape=shape or [len(texts)])],
        raw_input_contents=[encode_bytes_elements([t.encode() for t in texts])],
    )


def ids_request(ids_bytes: int) -> v2.ModelInferRequest:
    """Token ids [1, 2] and a mask, with `ids_bytes` raw bytes of ids."""
    ids = Tensor(name="input_ids", datatype="INT64", shape=[1, 2])
    mask = Tensor(name="attention_mask", datatype="INT64", shape=[1, 2])
    return v2.ModelInferRequest(model_name="tiny-embed", inputs=[ids, mask],
                                raw_input_contents=[b"\1" * ids_bytes, np.ones(2, "<i8").tobytes()])


async def status_of(stub: Any, request: v2.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(request, timeout=10)
    return caught.value.code(), caught.value.details() or ""


async def test_typed_contents_answer_like_raw_contents(server: Any, stub: Any) -> None:
    typed = v2.ModelInferRequest(model_name="tiny-embed", inputs=[Tensor(name="text", datatype="BYTES", shape=[2])])
    typed.inputs[0].contents.bytes_contents.extend([b"hello", b"a b"])
    answer = await stub.ModelInfer(typed, timeout=10)
    assert answer.outputs[0].name == "embeddings" and list(answer.outputs[0].shape) == [2, 32]
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 32)
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        np.testing.assert_allclose(got, np.array(await client.embed(["hello", "a b"])), atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (text_request(["a", "b"], shape=[-2]), "must not be negative"),
        (text_request(["a", "b"], shape=[3]), r"shape \[3\] \(3 elements\) but carries 2"),
        (text_request(["a", "b"], shape=[1, 2]), r"\[batch\] or \[batch, 1\]"),
        (text_request(["a"] * 5), "between 1 and 4"),
        (text_request([]), "between 1 and 4"),
        (v2.ModelInferRequest(model_name="tiny-embed"), "no inputs"),
        (v2.ModelInferRequest(model_name="", inputs=[Tensor(name="text")]), "model name is required"),
        (ids_request(ids_bytes=8), r"16 bytes\) but carries 8"),
    ],
)
async def test_malformed_tensors_get_invalid_argument(
    stub: Any, request_: v2.ModelInferRequest, message: str
) -> None:
    code, details = await status_of(stub, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details


async def test_timeout_parameter_must_be_integer_microseconds(stub: Any) -> None:
    request = text_request(["hi"])
    request.parameters["timeout"].string_param = "soon"
    code, details = await status_of(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "microseconds" in details
    request.parameters["timeout"].int64_param = 5_000_000
    assert (await stub.ModelInfer(request, timeout=10)).model_name == "tiny-embed"


async def test_unready_model_is_unavailable(server: Any, stub: Any) -> None:
    model = server.registry.models["tiny-embed"]
    model.ready = False
    try:
        code, _ = await status_of(stub, text_request(["hi"]))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert not (await stub.ModelReady(v2.ModelReadyRequest(name="tiny-embed"), timeout=10)).ready
        assert not (await stub.ServerReady(v2.ServerReadyRequest(), timeout=10)).ready
    finally:
        model.ready = True
    assert (await stub.ModelReady(v2.ModelReadyRequest(name="tiny-embed"), timeout=10)).ready


async def test_service_is_in_health_and_reflection(server: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in reflection.ServerReflectionInfo(iter([request]), timeout=10):
            names = {s.name for s in response.list_services_response.service}
            assert "inference.GRPCInferenceService" in names
            break


async def test_repository_index_says_why_a_model_is_unavailable(server: Any, stub: Any) -> None:
    model = server.registry.models["tiny-embed"]
    model.ready = False  # as when its engine hangs
    try:
        index = await stub.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10)
        only_ready = await stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=True), timeout=10)
    finally:
        model.ready = True
    [entry] = index.models
    assert (entry.name, entry.version, entry.state) == ("tiny-embed", "1", "UNAVAILABLE") and entry.reason
    assert not only_ready.models
    assert [m.state for m in (await stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=True), timeout=10)).models] \
        == ["READY"]


async def test_overload_refuses_model_infer_with_a_reason_and_counts_it(server: Any, stub: Any) -> None:
    admission = server.registry.models["tiny-embed"].batcher.admission
    statistics = v2.ModelStatisticsRequest(name="tiny-embed")
    before = (await stub.ModelStatistics(statistics, timeout=10)).model_stats[0].inference_stats.fail.count
    saved, admission.queued_seconds = admission.queued_seconds, 1e9  # the queue ahead outlasts every deadline
    try:
        refused = [await status_of(stub, text_request(texts)) for texts in (["one text"], ["two", "texts"])]
        streamed = [answer async for answer in stub.ModelStreamInfer(iter([text_request(["in a stream"])]),
                                                                       timeout=10)]
    finally:
        admission.queued_seconds = saved
    for code, details in refused:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in details, details
    [answer] = streamed  # a streamed request's refusal comes in-band; the stream goes on
    assert answer.error_message.startswith("[RESOURCE_EXHAUSTED] server busy"), answer.error_message
    after = (await stub.ModelStatistics(statistics, timeout=10)).model_stats[0].inference_stats.fail.count
    assert after == before + 3
    assert (await stub.ModelInfer(text_request(["one text"]), timeout=10)).outputs[0].name == "embeddings"


async def test_one_text_that_is_not_utf8_gets_invalid_argument(stub: Any) -> None:
    request = v2.ModelInferRequest(model_name="tiny-embed", inputs=[Tensor(name="text", datatype="BYTES", shape=[1])],
                                   raw_input_contents=[encode_bytes_elements([b"\xff\xfe"])])
    code, details = await status_of(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not valid UTF-8" in details, details
