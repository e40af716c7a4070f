"""Reading a V2 request's inputs: the one-text layout tritonclient sends is read in a few steps, and
must give exactly what the general checks give, or leave the request to them."""

from __future__ import annotations

import pytest

from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.service.kserve.inputs import TextInputs, lone_text, named_inputs, text_inputs, truncate_parameter
from millibatch.service.kserve.tensors import encode_bytes_elements

Tensor = v2.ModelInferRequest.InferInputTensor


def request(texts: list[bytes], shape: list[int], name: str = "text", datatype: str = "BYTES",
            raw: bytes | None = None) -> v2.ModelInferRequest:
    return v2.ModelInferRequest(model_name="m", inputs=[Tensor(name=name, datatype=datatype, shape=shape)],
                                raw_input_contents=[encode_bytes_elements(texts) if raw is None else raw])


def general(message: v2.ModelInferRequest) -> TextInputs:
    return text_inputs(named_inputs(message), truncate_parameter(message))


@pytest.mark.parametrize("shape", [[1], [1, 1]])
@pytest.mark.parametrize("truncate", [None, True, False])
@pytest.mark.parametrize("text", ["hello world", "", "naïve café 東京 🙂"])
def test_one_text_reads_as_the_general_path_reads_it(shape: list[int], truncate: bool | None, text: str) -> None:
    message = request([text.encode()], shape)
    if truncate is not None:
        message.parameters["truncate"].bool_param = truncate
    assert lone_text(message) == text
    expected = general(message)
    assert (expected.texts, list(expected.pairs)) == ([text], [])
    assert expected.truncate == bool(truncate)


@pytest.mark.parametrize(
    "message",
    [
        request([b"a", b"b"], [2]),  # two texts
        request([b"a"], [1, 2]),  # a shape the general path refuses, with its reason
        request([b"a"], [2, 1]),
        request([b"a"], [1], name="text_pair"),
        request([b"a"], [1], name="input_ids"),
        request([b"a"], [1], datatype="INT64"),
        request([b"a"], [1], raw=b"\x05\x00\x00\x00abc"),  # the length prefix disagrees with the bytes
        request([b"a"], [1], raw=b"\x01\x00"),  # shorter than a length prefix
        request([b"\xff\xfe"], [1]),  # not UTF-8
        v2.ModelInferRequest(model_name="m", inputs=[Tensor(name="text", datatype="BYTES", shape=[1])]),  # typed
    ],
)
def test_anything_else_is_left_to_the_general_checks(message: v2.ModelInferRequest) -> None:
    assert lone_text(message) is None


def test_a_text_with_its_pair_is_left_to_the_general_checks() -> None:
    message = request([b"a"], [1])
    message.inputs.append(Tensor(name="text_pair", datatype="BYTES", shape=[1]))
    message.raw_input_contents.append(encode_bytes_elements([b"b"]))
    assert lone_text(message) is None
    assert general(message) == TextInputs(["a"], ["b"], False)
