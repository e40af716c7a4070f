"""Hand-built protobuf wire bytes, so tests can send what no generated client would."""

from __future__ import annotations

from millibatch.service.vector_wire import varint

VARINT, LEN = 0, 2


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """One field: tag, then a varint value or a length-delimited payload."""
    tag = varint(number << 3 | wire_type)
    if wire_type == VARINT:
        assert isinstance(payload, int)
        return tag + varint(payload)
    assert isinstance(payload, bytes)
    return tag + varint(len(payload)) + payload
