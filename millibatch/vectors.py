"""Embedding vectors on the wire: Matryoshka truncation and the packed layouts of `VectorEncoding`.

The byte layouts are specified in protos/millibatch/v1/inference.proto; this module is their one
implementation, used by the server to pack and by the client to unpack. It needs numpy only, and the
client imports it only when a packed encoding is asked for, so a client-only install (grpcio +
protobuf) never needs numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

#: A packed encoding by name; VECTOR_ENCODING_<NAME.upper()> on the wire.
Encoding = Literal["float32", "float16", "int8", "binary"]
ENCODINGS: tuple[Encoding, ...] = ("float32", "float16", "int8", "binary")
#: Little-endian element types of the numeric layouts (binary is bits, see pack).
_DTYPES: dict[str, str] = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
#: int8 uses the symmetric range ±127 so that q and -q are both representable.
INT8_MAX = 127
#: Norms below this count as zero when normalising (as torch.nn.functional.normalize's eps).
_NORM_EPS = 1e-12


def truncate_dimensions(vectors: npt.ArrayLike, dims: int, normalize: bool) -> npt.NDArray[np.float32]:
    """The first `dims` values of each row of `vectors` [rows, width] (Matryoshka), L2-normalised again
    when `normalize`."""
    rows = _rows(vectors)
    if not 1 <= dims <= rows.shape[1]:
        raise ValueError(f"dimensions must be between 1 and {rows.shape[1]}, got {dims}")
    cut = np.array(rows[:, :dims], dtype=np.float32)
    if normalize:
        # A unit vector cut short is no longer unit length; cosine and dot product then disagree.
        cut /= np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), _NORM_EPS)
    return cut


def packed_size(encoding: Encoding, dims: int) -> int:
    """Bytes one packed vector of `dims` values takes."""
    if encoding == "binary":
        return -(-dims // 8)
    return dims * np.dtype(_DTYPES[encoding]).itemsize


def pack(vectors: npt.ArrayLike, encoding: Encoding) -> list[tuple[bytes, float]]:
    """Each row of `vectors` [rows, dims] as (packed bytes, scale); scale is 0.0 except for int8."""
    rows = _rows(vectors)
    scales = np.zeros(rows.shape[0], dtype=np.float32)
    data: npt.NDArray[Any]
    if encoding == "binary":
        data = np.packbits(rows > 0, axis=1)  # most significant bit first, last byte zero-padded
    elif encoding == "int8":
        # Computed in float32, the precision of the proto's scale field, so the client's
        # q * scale is exactly the server's reconstruction.
        scales = np.abs(rows).max(axis=1, initial=0.0) / np.float32(INT8_MAX)
        divisor = np.where(scales > 0, scales, np.float32(1.0))[:, None]
        data = np.clip(np.rint(rows / divisor), -INT8_MAX, INT8_MAX).astype(np.int8)
    elif encoding in _DTYPES:
        data = rows.astype(_DTYPES[encoding])
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    blob = np.ascontiguousarray(data).tobytes()
    width = packed_size(encoding, rows.shape[1])
    return [(blob[i * width : (i + 1) * width], float(scale)) for i, scale in enumerate(scales.tolist())]


def unpack_rows(
    packed: Sequence[bytes], scales: Sequence[float], encoding: Encoding, dims: int | None = None
) -> npt.NDArray[Any]:
    """The inverse of `pack` for many vectors at once: float32 [rows, dims] for float32, float16 and int8
    (q * scale), and for binary the bits themselves, uint8 0/1 [rows, dims].

    `dims` is needed for binary vectors whose length is not a multiple of 8; None takes it from the bytes.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if dims is None:
        size = len(packed[0]) if packed else 0
        dims = size * 8 if encoding == "binary" else size // np.dtype(_DTYPES[encoding]).itemsize
    width = packed_size(encoding, dims)
    for index, row in enumerate(packed):
        if len(row) != width:
            raise ValueError(f"vector {index} has {len(row)} bytes; {dims} dimensions of {encoding} take {width}")
    blob = b"".join(packed)
    if encoding == "binary":
        return np.unpackbits(np.frombuffer(blob, dtype=np.uint8).reshape(len(packed), width), axis=1, count=dims)
    values = np.frombuffer(blob, dtype=_DTYPES[encoding]).reshape(len(packed), dims).astype(np.float32)
    if encoding == "int8":
        if len(scales) != len(packed):
            raise ValueError(f"{len(packed)} int8 vectors need as many scales, got {len(scales)}")
        values *= np.asarray(scales, dtype=np.float32)[:, None]
    return values


def unpack(packed: bytes, scale: float, encoding: Encoding, dims: int | None = None) -> npt.NDArray[Any]:
    """One packed vector back as a 1-D array; see `unpack_rows` for the types."""
    return unpack_rows([packed], [scale], encoding, dims)[0]


def _rows(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    rows = np.asarray(vectors, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"expected a [rows, dims] array, got shape {rows.shape}")
    return rows
