"""A V2 inference request → model rows: texts tokenized on the server, or token ids as sent.

Two input layouts are accepted (see docs/KSERVE.md): `text` (BYTES, [batch] or [batch, 1]) with an
optional `text_pair`, or `input_ids` + `attention_mask` (INT64/INT32, [batch, seq], right-padded) with
optional `token_type_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from millibatch.batching.work import Row
from millibatch.errors import InputTooLong, InvalidInput
from millibatch.kserve import grpc_service_pb2 as v2
from millibatch.service.kserve.tensors import InputTensor, raw_contents, read_integers, read_texts
from millibatch.service.tokenization import TextEncoder

TEXT, TEXT_PAIR = "text", "text_pair"
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
TEXT_INPUTS = (TEXT, TEXT_PAIR)
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)


def named_inputs(request: v2.ModelInferRequest) -> dict[str, tuple[InputTensor, bytes | None]]:
    """The request's inputs by name with their raw bytes; unknown, duplicate or mixed layouts are refused."""
    if not request.inputs:
        raise InvalidInput(f"request has no inputs; send {TEXT!r} (BYTES) or {INPUT_IDS!r} + {ATTENTION_MASK!r}")
    named: dict[str, tuple[InputTensor, bytes | None]] = {}
    for tensor, raw in zip(request.inputs, raw_contents(request), strict=True):
        if tensor.name not in TEXT_INPUTS + TOKEN_INPUTS:
            known = ", ".join(TEXT_INPUTS + TOKEN_INPUTS)
            raise InvalidInput(f"unknown input {tensor.name!r}; this model takes {known}")
        if tensor.name in named:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        named[tensor.name] = (tensor, raw)
    if any(n in named for n in TEXT_INPUTS) and any(n in named for n in TOKEN_INPUTS):
        raise InvalidInput("send either text inputs or token id inputs, not both")
    return named


def text_batch(tensor: InputTensor, raw: bytes | None) -> list[str]:
    """A text input's strings; its shape must be [batch] or [batch, 1]."""
    shape = list(tensor.shape)
    texts = read_texts(tensor, raw)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"input {tensor.name!r} has shape {shape}; it must be [batch] or [batch, 1]")
    return texts


def truncate_parameter(request: v2.ModelInferRequest) -> bool:
    """The request's `truncate` parameter (bool, default false)."""
    if "truncate" not in request.parameters:
        return False
    parameter = request.parameters["truncate"]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidInput("parameter 'truncate' must be a bool")
    return parameter.bool_param


@dataclass(frozen=True)
class TextInputs:
    """Texts (and second texts of pairs) to tokenize on the server."""

    texts: list[str]
    pairs: Sequence[str]
    truncate: bool


def text_inputs(named: dict[str, tuple[InputTensor, bytes | None]], truncate: bool) -> TextInputs:
    """`text` (and `text_pair`), checked against each other."""
    if TEXT not in named:
        raise InvalidInput(f"input {TEXT_PAIR!r} needs the input {TEXT!r}")
    texts = text_batch(*named[TEXT])
    pairs: Sequence[str] = text_batch(*named[TEXT_PAIR]) if TEXT_PAIR in named else ()
    if pairs and len(pairs) != len(texts):
        raise InvalidInput(f"{TEXT_PAIR!r} has {len(pairs)} elements; it must match the {len(texts)} texts")
    return TextInputs(texts, pairs, truncate)


def token_rows(
    named: dict[str, tuple[InputTensor, bytes | None]], max_length: int, vocab_size: int
) -> list[Row]:
    """Rows from pre-tokenized, right-padded `input_ids` / `attention_mask` / `token_type_ids`."""
    for required in (INPUT_IDS, ATTENTION_MASK):
        if required not in named:
            raise InvalidInput(f"missing input {required!r}; token inputs need {INPUT_IDS!r} and {ATTENTION_MASK!r}")
    ids = read_integers(*named[INPUT_IDS])
    if ids.ndim != 2:
        raise InvalidInput(f"input {INPUT_IDS!r} has shape {list(ids.shape)}; it must be [batch, sequence]")
    mask = same_shape(ATTENTION_MASK, read_integers(*named[ATTENTION_MASK]), ids.shape)
    types = (same_shape(TOKEN_TYPE_IDS, read_integers(*named[TOKEN_TYPE_IDS]), ids.shape)
             if TOKEN_TYPE_IDS in named else np.zeros_like(ids))
    if not np.isin(mask, (0, 1)).all():
        raise InvalidInput(f"{ATTENTION_MASK!r} must hold only 0 and 1")
    lengths = mask.sum(axis=1)
    # Rows carry only their real tokens (the batcher re-pads), so padding must sit at the right end.
    if not (mask == (np.arange(ids.shape[1]) < lengths[:, None])).all():
        raise InvalidInput(f"{ATTENTION_MASK!r} must be right-padded: ones, then zeros")
    if ids.shape[0] and lengths.min() == 0:
        raise InvalidInput(f"row {int(lengths.argmin())} of {ATTENTION_MASK!r} is all zeros")
    if ids.shape[0] and lengths.max() > max_length:
        row = int(lengths.argmax())
        raise InputTooLong(f"row {row} has {int(lengths[row])} tokens; the model accepts at most {max_length}")
    real = mask.astype(bool)
    if ((ids < 0) | (ids >= vocab_size))[real].any():
        raise InvalidInput(f"{INPUT_IDS!r} must be in [0, {vocab_size}) for this model's vocabulary")
    if not np.isin(types[real], (0, 1)).all():
        raise InvalidInput(f"{TOKEN_TYPE_IDS!r} must be 0 or 1")
    return [Row(ids=ids[i, :n].copy(), type_ids=types[i, :n].copy()) for i, n in enumerate(lengths.tolist())]


def same_shape(name: str, array: npt.NDArray[np.int64], shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """`array`, refused unless it has the shape of `input_ids`."""
    if array.shape != shape:
        raise InvalidInput(f"input {name!r} has shape {list(array.shape)}; it must match {INPUT_IDS!r} {list(shape)}")
    return array


def lone_text(request: v2.ModelInferRequest) -> str | None:
    """The text of a request in the layout tritonclient sends for one text (a single BYTES input `text`
    of shape [1] or [1, 1] in `raw_input_contents`), or None for any other request. Read in a few steps
    rather than through the general checks: under overload most such calls are refused right after
    this, and every function a refusal passes through is paid per call (docs/OVERLOAD.md)."""
    inputs, raws = request.inputs, request.raw_input_contents
    if len(inputs) != 1 or len(raws) != 1:
        return None
    tensor, raw = inputs[0], raws[0]
    if tensor.name != TEXT or tensor.datatype != "BYTES" or len(raw) < 4:
        return None
    shape = tensor.shape
    if not (len(shape) in (1, 2) and shape[0] == 1 and shape[-1] == 1):
        return None
    if int.from_bytes(raw[:4], "little") != len(raw) - 4:
        return None
    try:
        return raw[4:].decode("utf-8")
    except UnicodeDecodeError:  # the general path says why
        return None


def request_inputs(request: v2.ModelInferRequest, encoder: TextEncoder) -> TextInputs | list[Row]:
    """The request's texts to tokenize, or its rows of token ids, from whichever input layout it uses."""
    text = lone_text(request)
    if text is not None:
        return TextInputs([text], (), truncate_parameter(request))
    named = named_inputs(request)
    if any(n in named for n in TEXT_INPUTS):
        return text_inputs(named, truncate_parameter(request))
    return token_rows(named, encoder.max_length, encoder.vocab_size)
