"""Hostile input against one real server: every case gets its proper status, and the server keeps serving.

Raw cases are sent as bytes with a generic `unary_unary` (no client-side serializer), so they reach the
server exactly as written: invalid UTF-8, truncated messages, wrong wire types, unknown fields.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millibatch.v1 import inference_pb2 as pb
from tests.service.background import server_in_thread
from tests.service.wire import LEN, VARINT, field

EMBED = "/millibatch.v1.Inference/Embed"
CLASSIFY = "/millibatch.v1.Inference/Classify"
TOKENIZE = "/millibatch.v1.Inference/Tokenize"
RERANK = "/millibatch.v1.Inference/Rerank"
SPARSE = "/millibatch.v1.Inference/EmbedSparse"
REPOSITORY_INDEX = "/inference.GRPCInferenceService/RepositoryIndex"
REPOSITORY_LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"
MAX_MESSAGE = 8 * 1024 * 1024
MAX_CHARS = 20_000
MAX_TOKENS = 1_000
MAX_INPUTS = 64
#: Codes a well-behaved server may answer to arbitrary requests; never INTERNAL or UNKNOWN.
CALLER_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module")
def port(tiny_embed_dir: Path, tiny_classify_dir: Path, tiny_sparse_dir: Path) -> Iterator[int]:
    with server_in_thread([tiny_embed_dir, tiny_classify_dir, tiny_sparse_dir], max_chars_per_input=MAX_CHARS,
                          max_tokens_per_request=MAX_TOKENS, max_inputs_per_request=MAX_INPUTS,
                          max_receive_message_bytes=MAX_MESSAGE) as server:
        yield server.port


@pytest.fixture(scope="module")
def channel(port: int) -> Iterator[grpc.Channel]:
    # The client may send more than the server accepts: the server's limit is what is under test.
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]) as ch:
        yield ch


def call_raw(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 20) -> tuple[grpc.StatusCode, str]:
    """Send raw bytes; return the status code and details."""
    stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        stub(payload, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def assert_still_serving(channel: grpc.Channel) -> None:
    code, details = call_raw(channel, EMBED, pb.EmbedRequest(inputs=["still here"]).SerializeToString(), timeout=10)
    assert code == grpc.StatusCode.OK, details


def embed(*inputs: str, truncate: bool = False, model: str = "", **fields: Any) -> bytes:
    return pb.EmbedRequest(inputs=list(inputs), truncate=truncate, model=model, **fields).SerializeToString()


def rerank(query: str, *documents: str, model: str = "tiny-classify", **fields: Any) -> bytes:
    return pb.RerankRequest(model=model, query=query, documents=list(documents), **fields).SerializeToString()


def sparse(*inputs: str, model: str = "tiny-sparse", **fields: Any) -> bytes:
    return pb.EmbedSparseRequest(model=model, inputs=list(inputs), **fields).SerializeToString()


VALID = embed("hello world")
CASES: list[tuple[str, str, Any, grpc.StatusCode]] = [
    ("empty request", EMBED, b"", grpc.StatusCode.INVALID_ARGUMENT),
    ("empty string", EMBED, embed(""), grpc.StatusCode.INVALID_ARGUMENT),
    ("giant string 6 MB", EMBED, lambda: embed("x" * 6_000_000), grpc.StatusCode.INVALID_ARGUMENT),
    ("huge message 9 MB", EMBED, lambda: embed("y" * 9_000_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("2 million tiny inputs", EMBED, lambda: field(2, LEN, b"a") * 2_000_000, grpc.StatusCode.INVALID_ARGUMENT),
    ("invalid UTF-8 in inputs", EMBED, field(2, LEN, b"ok \xff\xfe\xc3"), grpc.StatusCode.INVALID_ARGUMENT),
    ("invalid UTF-8 in model", CLASSIFY, field(1, LEN, b"\xed\xa0\x80") + field(2, LEN, b"hi"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("truncated message", EMBED, VALID[:-3], grpc.StatusCode.INVALID_ARGUMENT),
    ("length past the end", TOKENIZE, field(2, LEN, b"abc")[:2] + b"\x7f", grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong wire type for inputs", EMBED, field(2, VARINT, 7), grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong wire type for truncate", EMBED, VALID + field(3, LEN, b"yes"), grpc.StatusCode.OK),
    ("unknown fields are ignored", EMBED, VALID + field(99, LEN, b"zz") + field(1000, VARINT, 5), grpc.StatusCode.OK),
    ("repeated character at the char limit, truncated", EMBED, embed("a " * (MAX_CHARS // 2), truncate=True),
     grpc.StatusCode.OK),
    ("repeated character over the token limit", EMBED, embed("a " * 200), grpc.StatusCode.INVALID_ARGUMENT),
    ("one long word of one character", EMBED, embed("z" * MAX_CHARS), grpc.StatusCode.OK),
    ("control characters", EMBED, embed("\x00\x01\x07\x1b[31m\u202e\ufeff\u200b\r\n\t"), grpc.StatusCode.OK),
    ("too many inputs", EMBED, embed(*["w"] * (MAX_INPUTS + 1)), grpc.StatusCode.INVALID_ARGUMENT),
    ("too many tokens in total", EMBED, embed(*["word " * 60] * 20, truncate=True), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown model", EMBED, embed("hi", model="nope"), grpc.StatusCode.NOT_FOUND),
    ("wrong task", EMBED, embed("hi", model="tiny-classify"), grpc.StatusCode.FAILED_PRECONDITION),
    ("pairs do not match inputs", CLASSIFY,
     pb.ClassifyRequest(model="tiny-classify", inputs=["a", "b"], text_pairs=["c"]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown method", "/millibatch.v1.Inference/Explode", VALID, grpc.StatusCode.UNIMPLEMENTED),
    # Embed's options
    ("dimensions 0", EMBED, embed("hi", dimensions=0), grpc.StatusCode.INVALID_ARGUMENT),
    ("dimensions beyond the model", EMBED, embed("hi", dimensions=2**32 - 1), grpc.StatusCode.INVALID_ARGUMENT),
    ("dimensions as a negative varint", EMBED, VALID + field(5, VARINT, 2**64 - 1), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown encoding", EMBED, embed("hi", encoding=77), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown truncation direction", EMBED, embed("hi", truncation_direction=9), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown prompt name", EMBED, embed("hi", prompt_name="query"), grpc.StatusCode.INVALID_ARGUMENT),
    ("prompt and prompt name", EMBED, embed("hi", prompt_name="q", prompt="x"), grpc.StatusCode.INVALID_ARGUMENT),
    ("giant prompt 6 MB", EMBED, lambda: embed("hi", prompt="p" * 6_000_000), grpc.StatusCode.INVALID_ARGUMENT),
    ("long prompt on every one of many inputs", EMBED,
     lambda: embed(*["x"] * MAX_INPUTS, prompt="a " * (MAX_CHARS // 2 - 1), truncate=True),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("prompt with control characters", EMBED, embed("hi", prompt="\x00\u202e\ufeff "), grpc.StatusCode.OK),
    ("binary vectors of odd dimensions", EMBED, embed("hi", dimensions=3, encoding=pb.VECTOR_ENCODING_BINARY),
     grpc.StatusCode.OK),
    # Rerank
    ("rerank empty query", RERANK, rerank("", "doc"), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank no documents", RERANK, rerank("q"), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank empty document", RERANK, rerank("q", "a", ""), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank too many documents", RERANK, rerank("q", *["d"] * (MAX_INPUTS + 1)), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank giant query", RERANK, lambda: rerank("q" * 6_000_000, "d"), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank huge top_n", RERANK, rerank("q", "a", "b", top_n=2**32 - 1), grpc.StatusCode.OK),
    ("rerank unknown direction", RERANK, rerank("q", "a", truncation_direction=5), grpc.StatusCode.INVALID_ARGUMENT),
    ("rerank on an embedding model", RERANK, rerank("q", "d", model="tiny-embed"),
     grpc.StatusCode.FAILED_PRECONDITION),
    ("rerank over the token limit", RERANK, rerank("word " * 30, *["word " * 30] * 20, truncate=True),
     grpc.StatusCode.INVALID_ARGUMENT),
    # EmbedSparse
    ("sparse negative threshold", SPARSE, sparse("hi", threshold=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    ("sparse NaN threshold", SPARSE, sparse("hi", threshold=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
    ("sparse on an embedding model", SPARSE, sparse("hi", model="tiny-embed"), grpc.StatusCode.FAILED_PRECONDITION),
    ("sparse empty input", SPARSE, sparse(""), grpc.StatusCode.INVALID_ARGUMENT),
    ("sparse huge threshold keeps nothing", SPARSE, sparse("hi", threshold=3e38), grpc.StatusCode.OK),
    # KServe repository
    ("repository load", REPOSITORY_LOAD, field(2, LEN, b"tiny-embed"), grpc.StatusCode.UNIMPLEMENTED),
    ("repository index with corrupt bytes", REPOSITORY_INDEX, b"\x0a\xff", grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("method", "payload", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_status_and_server_keeps_serving(
    channel: grpc.Channel, method: str, payload: Any, expected: grpc.StatusCode
) -> None:
    body = payload() if callable(payload) else payload
    code, details = call_raw(channel, method, body)
    assert code == expected, details
    if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED):
        assert "Traceback" not in details and "Error parsing" not in details, details
    assert_still_serving(channel)


def test_giant_string_is_refused_before_tokenizing(channel: grpc.Channel) -> None:
    body = embed("x" * 6_000_000)
    call_raw(channel, EMBED, embed("warm"))
    started = time.perf_counter()
    code, details = call_raw(channel, EMBED, body)
    seconds = time.perf_counter() - started
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {MAX_CHARS}" in details
    # Tokenizing 6 MB would take seconds; the limit answers in well under one (mostly transfer).
    assert seconds < 1.0, seconds


texts = st.text(max_size=40) | st.sampled_from(["", "a " * 100, "\x00", "héllo wörld", "🙂" * 30])
fuzz = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz
@given(
    method=st.sampled_from([EMBED, CLASSIFY, TOKENIZE]),
    model=st.sampled_from(["", "tiny-embed", "tiny-classify", "missing"]) | st.text(max_size=8),
    inputs=st.lists(texts, max_size=8),
    pairs=st.lists(texts, max_size=3),
    truncate=st.booleans(),
    top_k=st.integers(0, 2**32 - 1),
)
def test_fuzzed_requests_get_caller_statuses(
    channel: grpc.Channel, method: str, model: str, inputs: list[str], pairs: list[str], truncate: bool, top_k: int
) -> None:
    if method == EMBED:
        body = pb.EmbedRequest(model=model, inputs=inputs, truncate=truncate).SerializeToString()
    elif method == CLASSIFY:
        body = pb.ClassifyRequest(model=model, inputs=inputs, text_pairs=pairs, truncate=truncate,
                                  top_k=top_k).SerializeToString()
    else:
        body = pb.TokenizeRequest(model=model, inputs=inputs, text_pairs=pairs, truncate=truncate).SerializeToString()
    code, details = call_raw(channel, method, body)
    assert code in CALLER_ERRORS, (code, details)


@fuzz
@given(
    dimensions=st.none() | st.integers(0, 2**32 - 1),
    encoding=st.integers(0, 6),
    direction=st.integers(0, 4),
    prompt_name=st.sampled_from(["", "query"]) | st.text(max_size=6),
    prompt=st.none() | texts,
    inputs=st.lists(texts, max_size=4),
)
def test_fuzzed_embed_options_get_caller_statuses(
    channel: grpc.Channel, dimensions: int | None, encoding: int, direction: int, prompt_name: str,
    prompt: str | None, inputs: list[str],
) -> None:
    request = pb.EmbedRequest(inputs=inputs, encoding=encoding, truncation_direction=direction,
                              prompt_name=prompt_name, truncate=True)
    if dimensions is not None:
        request.dimensions = dimensions
    if prompt is not None:
        request.prompt = prompt
    code, details = call_raw(channel, EMBED, request.SerializeToString())
    assert code in CALLER_ERRORS, (code, details)


@fuzz
@given(query=texts, documents=st.lists(texts, max_size=6), top_n=st.integers(0, 2**32 - 1),
       threshold=st.floats(width=32), model=st.sampled_from(["", "tiny-classify", "tiny-sparse", "tiny-embed"]))
def test_fuzzed_rerank_and_sparse_get_caller_statuses(
    channel: grpc.Channel, query: str, documents: list[str], top_n: int, threshold: float, model: str
) -> None:
    body = pb.RerankRequest(model=model, query=query, documents=documents, top_n=top_n, truncate=True)
    code, details = call_raw(channel, RERANK, body.SerializeToString())
    assert code in CALLER_ERRORS, (code, details)
    body = pb.EmbedSparseRequest(model=model, inputs=documents, threshold=threshold, truncate=True)
    code, details = call_raw(channel, SPARSE, body.SerializeToString())
    assert code in CALLER_ERRORS, (code, details)


@fuzz
@given(method=st.sampled_from([EMBED, CLASSIFY, TOKENIZE, RERANK, SPARSE, REPOSITORY_INDEX]),
       body=st.binary(max_size=200))
def test_fuzzed_bytes_get_caller_statuses(channel: grpc.Channel, method: str, body: bytes) -> None:
    code, details = call_raw(channel, method, body)
    assert code in CALLER_ERRORS, (code, details)
    assert "Traceback" not in details
