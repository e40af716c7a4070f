"""Float vectors written straight into protobuf's wire format.

An EmbedResponse's vectors go out as `repeated float values` (packed), whose bytes on the wire are the
vector's little-endian float32 bytes after a short key. Building the messages field by field turns every
float into a Python float and back (`tolist`, then protobuf's setter), which grows with the floats: about
0.6 ms for 64 vectors of 384. Here they are one conversion to bytes and one parse by protobuf, a copy.
`bench/response_build.py` times both ways, warm and with cold caches (docs/CALL_COST.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: Wire type of a length-delimited field (a message, or a packed repeated scalar).
_LEN = 2
#: EmbedResponse.embeddings and Embedding.values are both field 1.
_EMBEDDINGS = _VALUES = 1
#: Per vector size in bytes: the keys and lengths in front of each vector.
_HEADS: dict[int, bytes] = {}


def varint(value: int) -> bytes:
    """Base-128 varint encoding of a non-negative int, as protobuf writes keys and lengths."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key_and_length(number: int, length: int) -> bytes:
    return varint(number << 3 | _LEN) + varint(length)


def _head(size: int) -> bytes:
    """The keys and lengths in front of each vector of `size` bytes (made once per size)."""
    head = _HEADS.get(size)
    if head is None:
        values_key = _key_and_length(_VALUES, size)
        head = _HEADS[size] = _key_and_length(_EMBEDDINGS, len(values_key) + size) + values_key
    return head


def embeddings_field(vectors: npt.NDArray[Any]) -> bytes:
    """EmbedResponse's `embeddings` field in wire format: one Embedding per row of `vectors` [rows, dims],
    its `values` the row as float32. Merge it into a response with `MergeFromString`."""
    rows, dims = vectors.shape
    size = 4 * dims
    head = _head(size)
    # One conversion, then plain bytes: fewer numpy calls is what keeps a one-row answer cheap when the
    # caches are cold, as they are beside a busy engine.
    data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return b"".join([head + data[start : start + size] for start in range(0, rows * size, size)])
