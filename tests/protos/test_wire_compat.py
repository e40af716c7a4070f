"""Old clients keep working: existing field numbers never move, and every new enum's zero value is the
behaviour from before it existed."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

from millibatch.v1 import inference_pb2 as pb


def numbers(message: Descriptor) -> dict[str, int]:
    return {field.name: field.number for field in message.fields}


def test_existing_field_numbers_are_kept_and_new_ones_follow() -> None:
    assert numbers(pb.EmbedRequest.DESCRIPTOR) == {
        "model": 1, "inputs": 2, "truncate": 3, "normalize": 4,
        "dimensions": 5, "prompt_name": 6, "prompt": 7, "truncation_direction": 8, "encoding": 9,
    }
    assert numbers(pb.Embedding.DESCRIPTOR) == {"values": 1, "packed": 2, "scale": 3}
    assert numbers(pb.EmbedResponse.DESCRIPTOR) == {"embeddings": 1, "model": 2, "usage": 3, "timing": 4,
                                                     "dimensions": 5}


def test_presence_is_tracked_where_unset_differs_from_zero() -> None:
    request = pb.EmbedRequest()
    assert not request.HasField("dimensions") and not request.HasField("normalize")
    assert not request.HasField("prompt")
    request.dimensions = 0
    request.prompt = ""  # no prompt at all, not even the model's default
    assert request.HasField("dimensions") and request.HasField("prompt")


def test_an_old_request_reads_as_the_old_behaviour() -> None:
    old = pb.EmbedRequest(model="m", inputs=["a"], truncate=True).SerializeToString()
    request = pb.EmbedRequest.FromString(old)
    assert request.encoding == pb.VECTOR_ENCODING_UNSPECIFIED == 0
    assert request.truncation_direction == pb.TRUNCATION_DIRECTION_UNSPECIFIED == 0
    assert (request.prompt, request.prompt_name) == ("", "")
