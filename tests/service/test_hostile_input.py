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
MAX_MESSAGE = 8 * 1024 * 1024
MAX_CHARS = 20_000
MAX_TOKENS = 1_000
MAX_INPUTS = 64
#: Codes a well-behaved server may answer to arbitrary requests; never INTERNAL or UNKNOWN.
CALLER_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module")
def port(tiny_embed_dir: Path, tiny_classify_dir: Path) -> Iterator[int]:
    with server_in_thread([tiny_embed_dir, tiny_classify_dir], max_chars_per_input=MAX_CHARS,
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


def embed(*inputs: str, truncate: bool = False, model: str = "") -> bytes:
    return pb.EmbedRequest(inputs=list(inputs), truncate=truncate, model=model).SerializeToString()


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
@given(method=st.sampled_from([EMBED, CLASSIFY, TOKENIZE]), body=st.binary(max_size=200))
def test_fuzzed_bytes_get_caller_statuses(channel: grpc.Channel, method: str, body: bytes) -> None:
    code, details = call_raw(channel, method, body)
    assert code in CALLER_ERRORS, (code, details)
    assert "Traceback" not in details
