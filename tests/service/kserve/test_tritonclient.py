"""The official tritonclient against the real server on loopback: health, metadata, infer, stream, errors.

tritonclient runs in a child process (see triton_client.py); the server runs here, on this test
module's event loop, so the child is awaited without blocking it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2

from millibatch.client import AsyncClient
from millibatch.kserve import grpc_service_pb2, model_config_pb2
from tests.helpers import running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCRIPT = Path(__file__).with_name("triton_client.py")
TEXTS = ["A man is playing a guitar.", "The cat sat on the mat.", "hello"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tiny_embed_dir: Path, tiny_classify_dir: Path) -> AsyncIterator[Any]:
    async with running_server([tiny_embed_dir, tiny_classify_dir], max_inputs_per_request=16) as running:
        yield running


async def triton(server: Any, scenario: str, **spec: Any) -> Any:
    """Run a tritonclient scenario in a child process and return its JSON answer."""
    payload = json.dumps({"url": f"127.0.0.1:{server.port}", "scenario": scenario, **spec})
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), payload, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


async def millibatch_embed(server: Any, texts: list[str]) -> np.ndarray:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        return np.array(await client.embed(texts))


async def test_messages_match_tritonclient_field_for_field(server: Any) -> None:
    theirs = await triton(server, "descriptors")
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    their_enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
    for encoded in theirs.values():
        proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(encoded))
        assert proto.package == "inference"
        by_name.update(flatten(proto.message_type))
        their_enums.update({e.name: e for e in proto.enum_type})
        for service in proto.service:
            their_service = service
    ours: dict[str, descriptor_pb2.DescriptorProto] = {}
    for module in (grpc_service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        ours.update(flatten(proto.message_type))
        for enum in proto.enum_type:
            values = {(v.name, v.number) for v in their_enums[enum.name].value}
            assert {(v.name, v.number) for v in enum.value} <= values
    compared = 0
    for name, message in ours.items():
        assert name in by_name, f"{name} is not a V2 message"
        their_fields = {f.name: f for f in by_name[name].field}
        for field in message.field:
            theirs_field = their_fields[field.name]
            assert (field.number, field.type, field.label) == (
                theirs_field.number, theirs_field.type, theirs_field.label), f"{name}.{field.name}"
            assert field.type_name.split(".")[-1] == theirs_field.type_name.split(".")[-1], f"{name}.{field.name}"
            compared += 1
    assert compared > 80
    our_service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_methods = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                     for m in their_service.method}
    assert our_service.full_name == "inference.GRPCInferenceService"
    for method in our_service.methods:
        ours_method = ("." + method.input_type.full_name, "." + method.output_type.full_name)
        assert their_methods[method.name][:2] == ours_method


def flatten(messages: Any, prefix: str = "") -> dict[str, descriptor_pb2.DescriptorProto]:
    """Messages by dotted name, nested ones included."""
    found = {}
    for message in messages:
        name = prefix + message.name
        found[name] = message
        found.update(flatten(message.nested_type, name + "."))
    return found


async def test_liveness_and_readiness(server: Any) -> None:
    health = await triton(server, "health")
    assert health["live"] is True
    assert health["ready"] is True
    assert health["model_ready"] is True
    assert health["unknown_model"]["status"] == "NOT_FOUND"


async def test_server_and_model_metadata_and_config(server: Any) -> None:
    answer = await triton(server, "metadata", model="tiny-classify")
    assert answer["server"]["name"] == "millibatch"
    assert "model_configuration" in answer["server"]["extensions"]
    model = answer["model"]
    assert model["name"] == "tiny-classify" and model["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in model["inputs"]}["text"] == "BYTES"
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {"logits": ["-1", "3"], "probabilities": ["-1", "3"]}
    config = answer["config"]["config"]
    assert config["name"] == "tiny-classify"
    assert int(config["max_batch_size"]) > 0
    assert config["parameters"]["task"]["string_value"] == "classify"
    assert config["parameters"]["labels"]["string_value"] == "negative,neutral,positive"
    assert {o["name"] for o in config["output"]} == {"logits", "probabilities"}
    assert answer["statistics"]["model_stats"][0]["name"] == "tiny-classify"


async def test_repository_index_lists_the_models_and_load_unload_are_refused(server: Any) -> None:
    answer = await triton(server, "repository")
    assert answer["index"]["models"] == [
        {"name": "tiny-embed", "version": "1", "state": "READY"},
        {"name": "tiny-classify", "version": "1", "state": "READY"},
    ]
    for call in ("load", "unload"):
        assert answer[call]["status"] == "UNIMPLEMENTED"
        assert "models given at start-up" in answer[call]["message"], answer[call]


async def test_bytes_text_infer_equals_millibatch_embed(server: Any) -> None:
    answer = await triton(server, "infer", texts=TEXTS, names=["embeddings"])
    assert answer["id"] == "r-1" and answer["model"] == "tiny-embed"
    assert answer["shapes"] == {"embeddings": [3, 32]}
    v2 = np.array(answer["outputs"]["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(v2, await millibatch_embed(server, TEXTS), atol=1e-6)


async def test_int64_and_int32_token_ids_equal_text_infer(server: Any) -> None:
    # "hello" and "a b" with the MiniLM tokenizer, right-padded to a common length.
    ids = [[101, 7592, 102, 0], [101, 1037, 1038, 102]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
    expected = await millibatch_embed(server, ["hello", "a b"])
    for datatype in ("INT64", "INT32"):
        answer = await triton(server, "infer", texts=[], ints={"input_ids": ids, "attention_mask": mask},
                              datatype=datatype, names=["embeddings"])
        np.testing.assert_allclose(np.array(answer["outputs"]["embeddings"]), expected, atol=1e-6)


async def test_classify_with_pairs_returns_logits_and_probabilities(server: Any) -> None:
    answer = await triton(server, "infer", model="tiny-classify", texts=["a man plays", "a man plays"],
                          pairs=["music is made", "nobody moves"], names=["logits", "probabilities"])
    assert answer["shapes"] == {"logits": [2, 3], "probabilities": [2, 3]}
    probabilities = np.array(answer["outputs"]["probabilities"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(probabilities[0], probabilities[1])
    only = await triton(server, "infer", model="tiny-classify", texts=["x"], outputs=["logits"],
                        names=["logits", "probabilities"])
    assert list(only["shapes"]) == ["logits"]


async def test_streaming_infer_answers_each_request_and_reports_errors_in_band(server: Any) -> None:
    batches = [[t] for t in TEXTS] + [["bad model"]]
    answer = await triton(server, "stream", batches=batches, stream_models={"3": "no-such-model"})
    assert sorted(answer["ok"]) == ["s-0", "s-1", "s-2"]
    expected = await millibatch_embed(server, TEXTS)
    for i in range(3):
        np.testing.assert_allclose(np.array(answer["ok"][f"s-{i}"][0]), expected[i], atol=1e-6)
    assert len(answer["errors"]) == 1 and "no-such-model" in answer["errors"][0]


async def test_errors_have_the_status_tritonclient_users_expect(server: Any) -> None:
    errors = await triton(server, "errors")
    expected = {
        "unknown_model": "NOT_FOUND",
        "wrong_version": "NOT_FOUND",
        "wrong_datatype": "INVALID_ARGUMENT",
        "missing_mask": "INVALID_ARGUMENT",
        "unknown_input": "INVALID_ARGUMENT",
        "unknown_output": "INVALID_ARGUMENT",
        "mask_shape": "INVALID_ARGUMENT",
        "left_padded": "INVALID_ARGUMENT",
        "id_out_of_vocab": "INVALID_ARGUMENT",
        "too_long": "INVALID_ARGUMENT",
        "empty_text": "INVALID_ARGUMENT",
        "pair_without_text": "INVALID_ARGUMENT",
        "timeout_spent": "DEADLINE_EXCEEDED",
    }
    assert {name: (e or {}).get("status") for name, e in errors.items()} == expected
    assert "must be BYTES" in errors["wrong_datatype"]["message"]
    assert "attention_mask" in errors["missing_mask"]["message"]
    assert "[1, 3]" in errors["mask_shape"]["message"]


async def test_statistics_count_successes_and_failures(server: Any) -> None:
    before = (await triton(server, "metadata"))["statistics"]["model_stats"][0]
    await triton(server, "infer", texts=TEXTS, names=[])
    after = (await triton(server, "metadata"))["statistics"]["model_stats"][0]
    count = lambda stats: int(stats.get("inference_count", 0))  # noqa: E731
    assert count(after) == count(before) + len(TEXTS)
    success = lambda stats: int(stats["inference_stats"].get("success", {}).get("count", 0))  # noqa: E731
    assert success(after) == success(before) + 1
