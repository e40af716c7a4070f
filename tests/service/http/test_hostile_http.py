"""Hostile input on the HTTP door of one real server: every case gets its HTTP status with OpenAI's error
JSON and a message, nothing gets a 500, nothing hangs, and the server keeps serving.

Requests are sent with http.client from this thread (the server runs on its own loop in another), so
bodies and headers reach the server exactly as written.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import free_port
from tests.service.background import server_in_thread

MAX_MESSAGE = 8 * 1024 * 1024
MAX_CHARS = 20_000
MAX_INPUTS = 64
EMBEDDINGS, RERANK = "/v1/embeddings", "/v1/rerank"
#: Statuses a well-behaved server may answer arbitrary requests with; never 500.
CALLER_ERRORS = {200, 400, 404, 413}


@pytest.fixture(scope="module")
def port(tiny_embed_dir: Path, tiny_reranker_dir: Path) -> Iterator[int]:
    with server_in_thread([tiny_embed_dir, tiny_reranker_dir], http_port=free_port(), max_chars_per_input=MAX_CHARS,
                          max_tokens_per_request=1_000, max_inputs_per_request=MAX_INPUTS,
                          max_receive_message_bytes=MAX_MESSAGE) as server:
        yield server.http_port


def send(port: int, path: str, body: bytes | None, method: str = "POST", headers: dict[str, str] | None = None,
         timeout: float = 20) -> tuple[int, Any]:
    """One request on a fresh connection; the status and the JSON answer (or the raw text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def assert_still_serving(port: int) -> None:
    status, answer = send(port, EMBEDDINGS, b'{"input": "still here"}', timeout=10)
    assert status == 200, answer


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def rerank(**fields: Any) -> bytes:
    return json.dumps({"model": "tiny-reranker", "query": "q", "documents": ["d"], **fields}).encode()


CASES: list[tuple[str, str, Any, dict[str, str], int]] = [
    ("empty body", EMBEDDINGS, b"", {}, 400),
    ("JSON null", EMBEDDINGS, b"null", {}, 400),
    ("JSON array", EMBEDDINGS, b"[]", {}, 400),
    ("deeply nested JSON", EMBEDDINGS, lambda: b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", {}, 400),
    ("invalid UTF-8", EMBEDDINGS, b'{"input": "ok \xff\xfe"}', {}, 400),
    ("lone surrogate in input", EMBEDDINGS, b'{"input": "a\\ud800b"}', {}, 400),
    ("lone surrogate in a document", RERANK, b'{"query": "q", "documents": ["\\udfff"]}', {}, 400),
    ("NaN dimensions", EMBEDDINGS, b'{"input": "a", "dimensions": NaN}', {}, 400),
    ("no input", EMBEDDINGS, body(model="tiny-embed"), {}, 400),
    ("input object", EMBEDDINGS, body(input={"text": "a"}), {}, 400),
    ("input number", EMBEDDINGS, body(input=3), {}, 400),
    ("empty input list", EMBEDDINGS, body(input=[]), {}, 400),
    ("empty string", EMBEDDINGS, body(input=""), {}, 400),
    ("mixed strings and ids", EMBEDDINGS, body(input=["a", [1]]), {}, 400),
    ("float ids", EMBEDDINGS, body(input=[101.0, 102.0]), {}, 400),
    ("boolean ids", EMBEDDINGS, body(input=[True, False]), {}, 400),
    ("an id that is a string", EMBEDDINGS, body(input=[[101, "a"]]), {}, 400),
    ("empty token array", EMBEDDINGS, body(input=[[]]), {}, 400),
    ("negative id", EMBEDDINGS, body(input=[101, -1, 102]), {}, 400),
    ("id past the vocabulary", EMBEDDINGS, body(input=[101, 30522, 102]), {}, 400),
    ("id past int64", EMBEDDINGS, body(input=[10**30]), {}, 400),
    ("token array too long", EMBEDDINGS, body(input=[101] * 65), {}, 400),
    ("token arrays with a prompt", EMBEDDINGS, body(input=[101, 102], prompt="q: "), {}, 400),
    ("too many inputs", EMBEDDINGS, body(input=["w"] * (MAX_INPUTS + 1)), {}, 400),
    ("too many token arrays", EMBEDDINGS, body(input=[[101, 102]] * (MAX_INPUTS + 1)), {}, 400),
    ("giant string 6 MB", EMBEDDINGS, lambda: body(input="x" * 6_000_000), {}, 400),
    ("body of 9 MB", EMBEDDINGS, lambda: body(input="y" * 9_000_000), {}, 413),
    ("a declared length past the limit", EMBEDDINGS, b"{}", {"Content-Length": str(MAX_MESSAGE + 1)}, 413),
    ("over the token limit", EMBEDDINGS, body(input=["word " * 60] * 20, truncate=True), {}, 400),
    ("dimensions 0", EMBEDDINGS, body(input="a", dimensions=0), {}, 400),
    ("dimensions negative", EMBEDDINGS, body(input="a", dimensions=-3), {}, 400),
    ("dimensions a float", EMBEDDINGS, body(input="a", dimensions=8.0), {}, 400),
    ("dimensions a string", EMBEDDINGS, body(input="a", dimensions="8"), {}, 400),
    ("dimensions true", EMBEDDINGS, body(input="a", dimensions=True), {}, 400),
    ("dimensions beyond the model", EMBEDDINGS, body(input="a", dimensions=10**40), {}, 400),
    ("unknown encoding_format", EMBEDDINGS, body(input="a", encoding_format="int8"), {}, 400),
    ("user a number", EMBEDDINGS, body(input="a", user=7), {}, 400),
    ("user a string", EMBEDDINGS, body(input="a", user="someone"), {}, 200),
    ("unknown fields are ignored", EMBEDDINGS, body(input="a", frobnicate=[1, {}]), {}, 200),
    ("nulls count as absent", EMBEDDINGS, body(input="a", model=None, dimensions=None, user=None), {}, 200),
    ("model a number", EMBEDDINGS, body(input="a", model=1), {}, 400),
    ("unknown model", EMBEDDINGS, body(input="a", model="nope"), {}, 404),
    ("wrong task", EMBEDDINGS, body(input="a", model="tiny-reranker"), {}, 400),
    ("unknown prompt name", EMBEDDINGS, body(input="a", prompt_name="query"), {}, 400),
    ("prompt and prompt name", EMBEDDINGS, body(input="a", prompt_name="q", prompt="x"), {}, 400),
    ("truncate a string", EMBEDDINGS, body(input="a", truncate="yes"), {}, 400),
    ("unknown truncation direction", EMBEDDINGS, body(input="a", truncation_direction="up"), {}, 400),
    ("control characters", EMBEDDINGS, body(input="\x00\x01\x07\x1b[31m\u202e\ufeff\u200b\r\n\t"), {}, 200),
    ("timeout header negative", EMBEDDINGS, body(input="a"), {"X-Request-Timeout": "-1"}, 400),
    ("timeout header NaN", EMBEDDINGS, body(input="a"), {"X-Request-Timeout": "nan"}, 400),
    ("timeout header infinite", EMBEDDINGS, body(input="a"), {"X-Request-Timeout": "1e999"}, 400),
    ("timeout header tiny", EMBEDDINGS, body(input="a"), {"X-Request-Timeout": "1e-9"}, 504),
    ("not JSON content type", EMBEDDINGS, body(input="a"), {"Content-Type": "text/plain"}, 200),
    ("rerank documents a string", RERANK, rerank(documents="d"), {}, 400),
    ("rerank document a number", RERANK, rerank(documents=[1]), {}, 400),
    ("rerank document text a number", RERANK, rerank(documents=[{"text": 1}]), {}, 400),
    ("rerank document object without text", RERANK, rerank(documents=[{}]), {}, 400),
    ("rerank too many documents", RERANK, rerank(documents=["d"] * (MAX_INPUTS + 1)), {}, 400),
    ("rerank empty query", RERANK, rerank(query=""), {}, 400),
    ("rerank query a list", RERANK, rerank(query=["q"]), {}, 400),
    ("rerank giant query", RERANK, lambda: rerank(query="q" * 6_000_000), {}, 400),
    ("rerank top_n 0", RERANK, rerank(top_n=0), {}, 400),
    ("rerank top_n a string", RERANK, rerank(top_n="1"), {}, 400),
    ("rerank top_n huge", RERANK, rerank(top_n=10**30), {}, 200),
    ("rerank return_documents a string", RERANK, rerank(return_documents="yes"), {}, 400),
    ("rerank on an embedding model", RERANK, rerank(model="tiny-embed"), {}, 400),
    ("rerank over the token limit", RERANK, rerank(query="word " * 30, documents=["word " * 30] * 20, truncate=True),
     {}, 400),
]


@pytest.mark.parametrize(("path", "payload", "headers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_status_and_server_keeps_serving(
    port: int, path: str, payload: Any, headers: dict[str, str], expected: int
) -> None:
    data = payload() if callable(payload) else payload
    if "Content-Length" in headers:  # a length the body does not have: sent by hand, refused before reading
        status, answer = send_declared(port, path, data, headers)
    else:
        status, answer = send(port, path, data, headers=headers)
    assert status == expected, answer
    if status != 200:
        error = answer["error"]
        assert error["message"] and error["type"] and error["code"], answer
        assert "Traceback" not in error["message"]
    assert_still_serving(port)


def send_declared(port: int, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """A request whose Content-Length header promises more than is sent."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(data)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_oversized_body_is_refused_before_it_is_read(port: int) -> None:
    started = time.perf_counter()
    status, answer = send_declared(port, EMBEDDINGS, b"{", {"Content-Length": str(50 * MAX_MESSAGE)})
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    assert time.perf_counter() - started < 1.0


def test_giant_string_is_refused_before_tokenizing(port: int) -> None:
    data = body(input="x" * 6_000_000)
    started = time.perf_counter()
    status, answer = send(port, EMBEDDINGS, data)
    assert status == 400 and f"the limit is {MAX_CHARS}" in answer["error"]["message"]
    assert time.perf_counter() - started < 1.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
texts = st.text(max_size=30) | st.sampled_from(["", "a " * 100, "\x00", "héllo wörld", "🙂" * 30])
inputs = (texts | st.lists(texts, max_size=6) | st.lists(st.integers(-5, 40_000), max_size=8)
          | st.lists(st.lists(st.integers(-5, 40_000), max_size=8), max_size=4) | json_values)
fuzz = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz
@given(
    input_=inputs,
    model=st.sampled_from([None, "", "tiny-embed", "tiny-reranker", "missing"]) | json_values,
    dimensions=st.none() | st.integers(-2, 40) | json_values,
    encoding_format=st.sampled_from([None, "float", "base64", "int8"]) | json_values,
    extra=st.dictionaries(st.sampled_from(["truncate", "prompt", "prompt_name", "normalize", "truncation_direction",
                                           "user"]), json_values, max_size=3),
)
def test_fuzzed_embeddings_get_caller_statuses(port: int, input_: Any, model: Any, dimensions: Any,
                                               encoding_format: Any, extra: dict[str, Any]) -> None:
    fields = {"input": input_, "model": model, "dimensions": dimensions, "encoding_format": encoding_format, **extra}
    status, answer = send(port, EMBEDDINGS, json.dumps(fields).encode())
    assert status in CALLER_ERRORS, (status, answer)


@fuzz
@given(query=texts | json_values, documents=st.lists(texts | st.fixed_dictionaries({"text": texts}), max_size=6)
       | json_values, top_n=st.none() | st.integers(-1, 2**40) | json_values, model=st.sampled_from(
           ["tiny-reranker", "tiny-embed", "", "missing"]))
def test_fuzzed_reranks_get_caller_statuses(port: int, query: Any, documents: Any, top_n: Any, model: str) -> None:
    fields = {"query": query, "documents": documents, "top_n": top_n, "model": model, "truncate": True}
    status, answer = send(port, RERANK, json.dumps(fields).encode())
    assert status in CALLER_ERRORS, (status, answer)


@fuzz
@given(path=st.sampled_from([EMBEDDINGS, RERANK]), data=st.binary(max_size=200))
def test_fuzzed_bytes_get_caller_statuses(port: int, path: str, data: bytes) -> None:
    status, answer = send(port, path, data)
    assert status in CALLER_ERRORS, (status, answer)
