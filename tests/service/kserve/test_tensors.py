"""V2 tensor decoding: BYTES framing, shapes, datatypes, raw vs typed contents."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from millibatch.errors import InvalidInput
from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.service.kserve.tensors import (
    decode_bytes_elements,
    element_count,
    encode_bytes_elements,
    output_tensor,
    raw_contents,
    read_integers,
    read_texts,
)

Tensor = v2.ModelInferRequest.InferInputTensor


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_bytes_framing_round_trips(elements: list[bytes]) -> None:
    assert decode_bytes_elements("x", encode_bytes_elements(elements)) == elements


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00abc", b"\x01\x00", b"\x02\x00\x00\x00ab\x09"])
def test_truncated_bytes_framing_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="'x'"):
        decode_bytes_elements("x", raw)


def test_texts_from_raw_and_typed_contents() -> None:
    tensor = Tensor(name="text", datatype="BYTES", shape=[2, 1])
    assert read_texts(tensor, encode_bytes_elements([b"hi", "é".encode()])) == ["hi", "é"]
    tensor.contents.bytes_contents.extend([b"a", b"b"])
    assert read_texts(tensor, None) == ["a", "b"]


@pytest.mark.parametrize(
    ("tensor", "raw", "message"),
    [
        (Tensor(name="text", datatype="INT64", shape=[1]), b"", "must be BYTES"),
        (Tensor(name="text", datatype="BYTES", shape=[3]), encode_bytes_elements([b"a"]), r"shape \[3\]"),
        (Tensor(name="text", datatype="BYTES", shape=[-1]), encode_bytes_elements([b"a"]), "negative"),
        (Tensor(name="text", datatype="BYTES", shape=[1]), encode_bytes_elements([b"\xff"]), "UTF-8"),
    ],
)
def test_bad_text_tensors_are_refused(tensor: Tensor, raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_texts(tensor, raw)


@pytest.mark.parametrize("datatype", ["INT64", "INT32"])
def test_integers_from_raw_and_typed_contents(datatype: str) -> None:
    values = np.array([[1, 2, 3], [4, 5, 6]], dtype="<i8" if datatype == "INT64" else "<i4")
    tensor = Tensor(name="input_ids", datatype=datatype, shape=[2, 3])
    np.testing.assert_array_equal(read_integers(tensor, values.tobytes()), values)
    field = "int64_contents" if datatype == "INT64" else "int_contents"
    getattr(tensor.contents, field).extend(values.ravel().tolist())
    decoded = read_integers(tensor, None)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, values)


def test_integer_size_mismatch_names_shape_and_bytes() -> None:
    tensor = Tensor(name="input_ids", datatype="INT64", shape=[2, 3])
    with pytest.raises(InvalidInput, match=r"shape \[2, 3\] \(6 x INT64 = 48 bytes\) but carries 40"):
        read_integers(tensor, b"\0" * 40)
    tensor.contents.int64_contents.extend([1, 2])
    with pytest.raises(InvalidInput, match="carries 2 values"):
        read_integers(tensor, None)
    with pytest.raises(InvalidInput, match="INT64 or INT32"):
        read_integers(Tensor(name="input_ids", datatype="FP32", shape=[1]), b"\0" * 4)


def test_element_count_refuses_negative_dimensions() -> None:
    assert element_count("x", [2, 0, 5]) == 0
    with pytest.raises(InvalidInput, match="must not be negative"):
        element_count("x", [2, -1])


def test_raw_contents_must_cover_every_input_and_not_mix_with_typed() -> None:
    request = v2.ModelInferRequest(inputs=[Tensor(name="a"), Tensor(name="b")])
    assert raw_contents(request) == [None, None]
    request.raw_input_contents.append(b"x")
    with pytest.raises(InvalidInput, match="one per input"):
        raw_contents(request)
    request.raw_input_contents.append(b"y")
    assert raw_contents(request) == [b"x", b"y"]
    request.inputs[0].contents.bytes_contents.append(b"z")
    with pytest.raises(InvalidInput, match="use one"):
        raw_contents(request)


def test_output_tensor_is_little_endian_fp32_with_its_shape() -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    tensor, raw = output_tensor("embeddings", array)
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("embeddings", "FP32", [2, 3])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4").reshape(2, 3), array)
