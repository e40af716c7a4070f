"""V2 tensors ↔ numpy arrays and texts: plain functions, protobuf in and out, no model knowledge.

A V2 input carries its data either in `contents` (typed repeated fields) or, when the request uses
`raw_input_contents`, as little-endian bytes (BYTES elements each prefixed by a 4-byte little-endian
length). Every check here raises `InvalidInput` with the tensor's name, so the caller sees
INVALID_ARGUMENT with a message that says what to fix.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from millibatch.errors import InvalidInput
from millibatch.kserve import grpc_service_pb2 as v2

InputTensor = v2.ModelInferRequest.InferInputTensor

#: Fixed-size V2 datatypes millibatch reads or writes, as little-endian numpy dtypes.
DTYPES: dict[str, np.dtype[np.generic]] = {
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
}
#: Which `InferTensorContents` field holds each datatype.
CONTENTS_FIELD = {"BYTES": "bytes_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents"}
_LENGTH = struct.Struct("<I")


def element_count(name: str, shape: Sequence[int]) -> int:
    """Number of elements of a tensor shape; negative dimensions are refused."""
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input {name!r} has shape {list(shape)}; dimensions must not be negative")
    return math.prod(shape)


def decode_bytes_elements(name: str, raw: bytes) -> list[bytes]:
    """Split raw BYTES contents (4-byte little-endian length, then the bytes, per element)."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(f"input {name!r}: raw BYTES contents end inside a 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput(
                f"input {name!r}: a BYTES element claims {length} bytes but only {len(raw) - offset} remain"
            )
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """Raw BYTES contents: each element prefixed by its 4-byte little-endian length."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def read_texts(tensor: InputTensor, raw: bytes | None) -> list[str]:
    """A BYTES tensor's elements as UTF-8 strings, in row-major order, checked against its shape."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name!r} has datatype {tensor.datatype or '(none)'}; it must be BYTES")
    count = element_count(tensor.name, tensor.shape)
    elements = decode_bytes_elements(tensor.name, raw) if raw is not None else list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {list(tensor.shape)} ({count} elements) "
            f"but carries {len(elements)} BYTES elements"
        )
    try:
        return [e.decode("utf-8") for e in elements]
    except UnicodeDecodeError as error:
        raise InvalidInput(f"input {tensor.name!r} is not valid UTF-8 text ({error.reason})") from None


def read_integers(tensor: InputTensor, raw: bytes | None) -> npt.NDArray[np.int64]:
    """An INT64 or INT32 tensor as an int64 array of its declared shape."""
    if tensor.datatype not in ("INT64", "INT32"):
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype or '(none)'}; it must be INT64 or INT32"
        )
    shape = list(tensor.shape)
    count = element_count(tensor.name, shape)
    dtype = DTYPES[tensor.datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {tensor.name!r} has shape {shape} ({count} x {tensor.datatype} = "
                f"{count * dtype.itemsize} bytes) but carries {len(raw)} raw bytes"
            )
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = np.asarray(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]), dtype=dtype)
        if values.size != count:
            raise InvalidInput(
                f"input {tensor.name!r} has shape {shape} ({count} elements) but carries {values.size} values"
            )
    return values.astype(np.int64).reshape(shape)


def raw_contents(request: v2.ModelInferRequest) -> list[bytes | None]:
    """Each input's raw bytes, or None where it uses typed contents; mixing the two is refused."""
    raw = list(request.raw_input_contents)
    if not raw:
        return [None] * len(request.inputs)
    if len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries; it must have one per input ({len(request.inputs)})"
        )
    for tensor in request.inputs:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input {tensor.name!r} has typed contents but the request uses raw_input_contents; use one"
            )
    return [bytes(r) for r in raw]


def output_tensor(
    name: str, array: npt.NDArray[np.float32]
) -> tuple[v2.ModelInferResponse.InferOutputTensor, bytes]:
    """An FP32 output's metadata and its raw little-endian bytes."""
    data = np.ascontiguousarray(array, dtype=DTYPES["FP32"])
    return v2.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32", shape=data.shape), data.tobytes()
