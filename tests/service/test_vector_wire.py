"""Vectors written as wire bytes parse to exactly the messages protobuf builds from floats."""

from __future__ import annotations

import numpy as np
import pytest

from millibatch.service.vector_wire import embeddings_field, varint
from millibatch.v1 import inference_pb2 as pb


def built(vectors: np.ndarray) -> pb.EmbedResponse:
    """The response as protobuf builds it from Python floats."""
    return pb.EmbedResponse(embeddings=[pb.Embedding(values=row) for row in vectors.tolist()])


@pytest.mark.parametrize("shape", [(1, 384), (3, 7), (64, 1024), (2, 1), (5, 32)])
def test_same_bytes_and_values_as_building_the_messages(shape: tuple[int, int]) -> None:
    vectors = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    wire = embeddings_field(vectors)
    assert wire == built(vectors).SerializeToString()
    parsed = pb.EmbedResponse.FromString(wire)
    assert len(parsed.embeddings) == shape[0]
    np.testing.assert_array_equal(np.array([e.values for e in parsed.embeddings], dtype=np.float32), vectors)


def test_merges_after_the_other_fields() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = pb.EmbedResponse(model="m", dimensions=4, usage=pb.Usage(prompt_tokens=5, total_tokens=5))
    response.MergeFromString(embeddings_field(vectors))
    expected = built(vectors)
    expected.model, expected.dimensions = "m", 4
    expected.usage.prompt_tokens = expected.usage.total_tokens = 5
    assert response == expected


def test_other_dtypes_layouts_and_special_values_are_written_as_float32() -> None:
    values = np.array([[0.0, -0.0, np.inf, -np.inf], [1e-40, 3.4e38, 1.5, -2.25]], dtype=np.float64)
    for vectors in (values, np.asfortranarray(values), values.astype(">f4"), values[:, ::-1]):
        parsed = pb.EmbedResponse.FromString(embeddings_field(vectors))
        np.testing.assert_array_equal(np.array([e.values for e in parsed.embeddings], dtype=np.float32),
                                      np.asarray(vectors, dtype=np.float32))
    nan = pb.EmbedResponse.FromString(embeddings_field(np.full((1, 3), np.nan, dtype=np.float32)))
    assert np.isnan(nan.embeddings[0].values).all()


def test_long_vectors_take_multi_byte_lengths() -> None:
    # 4 x 40 000 bytes: both lengths need three varint bytes.
    vectors = np.random.default_rng(1).random((2, 40_000), dtype=np.float32)
    assert embeddings_field(vectors) == built(vectors).SerializeToString()


def test_varints_as_protobuf_writes_them() -> None:
    assert [varint(n) for n in (0, 1, 127, 128, 300, 16_384)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\x80\x80\x01"]
