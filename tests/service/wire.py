"""Hand-built protobuf wire bytes, so tests can send what no generated client would."""

from __future__ import annotations

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    """Base-128 varint encoding of a non-negative int."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """One field: tag, then a varint value or a length-delimited payload."""
    tag = varint(number << 3 | wire_type)
    if wire_type == VARINT:
        assert isinstance(payload, int)
        return tag + varint(payload)
    assert isinstance(payload, bytes)
    return tag + varint(len(payload)) + payload
