"""The HTTP door of a real server, with a plain aiohttp client: rerank, health, every error status with
OpenAI's error JSON, deadlines from the header, body limits, accounting, API keys, TLS and draining."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from millibatch.client import AsyncClient
from millibatch.service.http.patience import MIN_HANG_UPS
from tests.helpers import free_port, running_server
from tests.service.faulty import FaultyEngine
from tests.service.test_security import pki  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "How do cats sleep?"
DOCUMENTS = ["Cats sleep up to sixteen hours a day.", "The stock market fell.", "hello", "Dogs nap in the sun."]
BODY_LIMIT = 64 * 1024
KEY = "http-key-never-logged"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tiny_embed_dir: Path, tiny_reranker_dir: Path) -> AsyncIterator[Any]:
    async with running_server([tiny_embed_dir, tiny_reranker_dir], http_port=free_port(), max_inputs_per_request=8,
                              max_receive_message_bytes=BODY_LIMIT) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http(server: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}",
                                     timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(path, data=data, **kwargs) as response:
        return response.status, await response.json(content_type=None)


def error_of(answer: Any) -> dict[str, Any]:
    """The error object, checked to have OpenAI's shape."""
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}, answer
    return dict(answer["error"])


async def test_rerank_equals_the_grpc_rerank(server: Any, http: aiohttp.ClientSession) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as grpc_client:
        expected = await grpc_client.rerank(QUERY, DOCUMENTS, model="tiny-reranker")
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]]  # Cohere and Jina accept both forms
    status, answer = await post(http, "/v1/rerank", {"model": "tiny-reranker", "query": QUERY, "documents": documents})
    assert status == 200 and answer["model"] == "tiny-reranker"
    assert [(r["index"], r["relevance_score"]) for r in answer["results"]] == [(i, s) for i, s, _ in expected]
    assert all("document" not in r for r in answer["results"])
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0
    status, top = await post(http, "/v1/rerank", {"model": "tiny-reranker", "query": QUERY, "documents": DOCUMENTS,
                                                  "top_n": 2, "return_documents": True})
    assert status == 200 and [r["index"] for r in top["results"]] == [i for i, _, _ in expected[:2]]
    assert [r["document"] for r in top["results"]] == [{"text": DOCUMENTS[i]} for i, _, _ in expected[:2]]
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({"documents": ["a"]}, 400, "query", "query is required"),
    ({"query": "q", "documents": "a"}, 400, "documents", "documents must be a list"),
    ({"query": "q", "documents": []}, 400, "documents", "0 documents in one request; send between 1 and 8"),
    ({"query": "q", "documents": [{"title": "a"}]}, 400, "documents[0]", 'without a "text" field'),
    ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n", "top_n is 0; it must be at least 1"),
    ({"query": "", "documents": ["a"]}, 400, None, "query is empty"),
    ({"query": "q", "documents": ["a"], "model": "tiny-embed"}, 400, None, "does embed, not classify"),
    ({"query": "q", "documents": ["a"], "model": "nope"}, 404, None, "'nope' is not served"),
])
async def test_bad_reranks(http: aiohttp.ClientSession, body: dict[str, Any], status: int, param: str | None,
                           message: str) -> None:
    got, answer = await post(http, "/v1/rerank", {"model": "tiny-reranker", **body})
    error = error_of(answer)
    assert (got, error["param"]) == (status, param) and message in error["message"], answer


async def test_health_follows_warm_up_and_draining(server: Any, http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as response:
        assert response.status == 200 and (await response.json())["status"] == "serving"
    routes = server.http.routes
    routes.warm = False  # as while the models load
    try:
        async with http.get("/health") as response:
            assert response.status == 503 and (await response.json())["status"] == "warming up"
        status, answer = await post(http, "/v1/embeddings", {"input": "hi"})
        assert status == 503 and error_of(answer)["code"] == "not_serving" and "warming up" in str(answer)
    finally:
        routes.warm = True
    server.registry.accepting = False  # as while draining
    try:
        async with http.get("/health") as response:
            assert response.status == 503 and (await response.json())["status"] == "draining"
        status, answer = await post(http, "/v1/embeddings", {"input": "hi"})
        assert status == 503 and error_of(answer)["type"] == "server_error"
    finally:
        server.registry.accepting = True


async def test_overload_is_429_and_a_deadline_that_cannot_be_met_is_504(server: Any,
                                                                       http: aiohttp.ClientSession) -> None:
    admission = server.registry.models["tiny-embed"].batcher.admission
    queued, admission.queued_seconds = admission.queued_seconds, 1e9  # a queue that outlasts any deadline
    try:
        async with http.post("/v1/embeddings", json={"input": "hi"}) as response:
            status, answer, retry = response.status, await response.json(), response.headers
    finally:
        admission.queued_seconds = queued
    error = error_of(answer)
    assert (status, error["type"], error["code"]) == (429, "rate_limit_error", "overloaded"), answer
    assert (retry["Retry-After"], retry["retry-after-ms"]) == ("60", "60000")  # the hint's cap
    status, answer = await post(http, "/v1/embeddings", {"input": "hi"}, headers={"X-Request-Timeout": "0.000001"})
    assert (status, error_of(answer)["code"]) == (504, "deadline"), answer
    # While refusals persist, OpenAI's SDKs are told not to send a call that ran out of time again either.
    for overloaded in (False, True):
        server.plane.overloaded = overloaded
        try:
            async with http.post("/v1/embeddings", json={"input": "hi"},
                                 headers={"X-Request-Timeout": "0.000001"}) as response:
                assert response.status == 504
                assert response.headers.get("x-should-retry") == ("false" if overloaded else None)
        finally:
            server.plane.overloaded = False
    status, answer = await post(http, "/v1/embeddings", {"input": "hi"}, headers={"X-Request-Timeout": "5"})
    assert status == 200
    status, answer = await post(http, "/v1/embeddings", {"input": "hi"}, headers={"X-Request-Timeout": "soon"})
    assert (status, error_of(answer)["param"]) == (400, "X-Request-Timeout")


async def test_an_sdks_retry_is_refused_while_the_server_sheds_load(server: Any, http: aiohttp.ClientSession) -> None:
    """OpenAI's SDKs number their automatic retries; while refusals persist those are refused at once (each
    follows a timeout or a refusal and the SDK's backoff), and otherwise served like any call."""
    retry = {"X-Stainless-Retry-Count": "1", "X-Request-Timeout": "5"}
    for path, body in (("/v1/embeddings", {"input": "hi"}),
                       ("/v1/rerank", {"model": "tiny-reranker", "query": QUERY, "documents": DOCUMENTS})):
        server.plane.overloaded = True
        try:
            async with http.post(path, json=body, headers=retry) as response:
                status, answer, headers = response.status, await response.json(), response.headers
            first_attempt = await post(http, path, body, headers={**retry, "X-Stainless-Retry-Count": "0"})
            odd = [(await post(http, path, body, headers={**retry, "X-Stainless-Retry-Count": value}))[0]
                   for value in ("-1", "x", "\u00b2", "1" * 40)]
        finally:
            server.plane.overloaded = False
        error = error_of(answer)
        assert (status, error["type"], error["code"]) == (429, "rate_limit_error", "retry_refused"), answer
        assert "shedding load" in error["message"] and headers["x-should-retry"] == "false"
        assert first_attempt[0] == 200 and odd == [200] * 4  # only a count the header was meant to carry
        assert (await post(http, path, body, headers=retry))[0] == 200  # not shedding: a retry is a call


async def test_the_openai_sdks_read_timeout_is_the_deadline_unless_longer_than_the_default(
        server: Any, http: aiohttp.ClientSession) -> None:
    admission = server.registry.models["tiny-embed"].batcher.admission
    queued, admission.queued_seconds = admission.queued_seconds, 0.3 * admission.instances  # 0.3 s ahead
    admission.correction = 1.0  # as predicted: earlier calls that waited less than predicted lower it
    try:
        async def status_with(headers: dict[str, str]) -> int:
            return (await post(http, "/v1/embeddings", {"input": "hi"}, headers=headers))[0]

        assert await status_with({"X-Stainless-Read-Timeout": "0.1"}) == 429
        assert await status_with({"X-Stainless-Read-Timeout": "600"}) == 200  # the default (1 s) is shorter
        assert await status_with({}) == 200
        # X-Request-Timeout wins; the SDK's header is not ours to refuse, so a value it should not carry is ignored.
        assert await status_with({"X-Stainless-Read-Timeout": "0.1", "X-Request-Timeout": "5"}) == 200
        for odd in ("soon", "0", "-1", "nan", ""):
            assert await status_with({"X-Stainless-Read-Timeout": odd}) == 200, odd
    finally:
        admission.queued_seconds = queued


async def test_callers_that_state_no_deadline_get_the_patience_they_showed(tiny_embed_dir: Path) -> None:
    """Callers whose timeout the server is not told (the OpenAI Node SDK, curl --max-time) hang up when it
    passes. The door learns that from them and refuses at once a call the queue ahead would outlast,
    instead of computing answers for callers that have gone."""
    async with running_server([tiny_embed_dir], http_port=free_port(), instances=1) as server:
        batcher = server.registry.models["tiny-embed"].batcher
        engine = batcher.engine = FaultyEngine(batcher.engine, delay=0.3)
        assert server.http is not None
        patience = server.http.patience
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            async def hang_up(i: int) -> None:
                await asyncio.sleep(0.01 * i)  # hang-ups at one instant would be one client stalling
                with pytest.raises(asyncio.TimeoutError):
                    await http.post("/v1/embeddings", json={"input": [f"call {i}"]},
                                    timeout=aiohttp.ClientTimeout(total=0.1))

            await asyncio.gather(*(hang_up(i) for i in range(MIN_HANG_UPS)))
            for _ in range(200):  # each handler sees its closed connection and is cancelled
                if patience.learned():
                    break
                await asyncio.sleep(0.01)
            assert 0.05 < patience.learned()[""] < 0.2, patience.learned()
            engine.delay = 0.0
            admission = batcher.admission
            queued, admission.queued_seconds = admission.queued_seconds, 0.3 * admission.instances  # 0.3 s ahead
            admission.correction = 1.0  # as predicted: earlier calls that waited less than predicted lower it
            try:
                async def status_with(headers: dict[str, str]) -> int:
                    return (await post(http, "/v1/embeddings", {"input": "hi"}, headers=headers))[0]

                assert await status_with({}) == 429  # this group hangs up after about 0.1 s
                assert await status_with({"X-Request-Timeout": "5"}) == 200  # a stated deadline wins
                assert await status_with({"X-Stainless-Timeout": "0"}) == 200  # another group: the default
            finally:
                admission.queued_seconds = queued


async def test_without_learning_callers_that_state_no_deadline_get_the_default(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], http_port=free_port(), instances=1,
                              learn_http_patience=False) as server:
        assert server.http is not None and server.http.patience is None
        batcher = server.registry.models["tiny-embed"].batcher
        engine = batcher.engine = FaultyEngine(batcher.engine, delay=0.3)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            for i in range(MIN_HANG_UPS):
                with pytest.raises(asyncio.TimeoutError):
                    await http.post("/v1/embeddings", json={"input": [f"call {i}"]},
                                    timeout=aiohttp.ClientTimeout(total=0.1))
            engine.delay = 0.0
            admission = batcher.admission
            queued, admission.queued_seconds = admission.queued_seconds, 0.3 * admission.instances  # 0.3 s ahead
            admission.correction = 1.0
            try:
                assert (await post(http, "/v1/embeddings", {"input": "hi"}))[0] == 200  # the default (1 s) fits
            finally:
                admission.queued_seconds = queued
        assert server.ledger.cancelled == MIN_HANG_UPS


async def test_bodies_over_the_limit_are_413_before_or_while_reading(http: aiohttp.ClientSession) -> None:
    big = json.dumps({"input": "x" * BODY_LIMIT}).encode()
    status, answer = await post(http, "/v1/embeddings", big)
    assert (status, error_of(answer)["code"]) == (413, "request_too_large")
    assert f"the limit is {BODY_LIMIT} bytes" in answer["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused once the limit is passed
        for _ in range(8):
            yield b" " * (BODY_LIMIT // 4)

    async with http.post("/v1/embeddings", data=chunks()) as response:
        assert response.status == 413 and error_of(await response.json())["code"] == "request_too_large"


@pytest.mark.parametrize(("path", "method", "body", "status", "message"), [
    ("/v1/embeddings", "POST", b"{nope", 400, "request body is not valid JSON"),
    ("/v1/embeddings", "POST", b"[1, 2]", 400, "must be a JSON object, not an array"),
    ("/v1/embeddings", "POST", b"", 400, "not valid JSON"),
    ("/v1/embeddings", "GET", None, 405, "GET is not allowed"),
    ("/v2/embeddings", "POST", b"{}", 404, "no route '/v2/embeddings'"),
])
async def test_malformed_requests(http: aiohttp.ClientSession, path: str, method: str, body: bytes | None,
                                  status: int, message: str) -> None:
    async with http.request(method, path, data=body) as response:
        answer = await response.json(content_type=None)
        assert response.status == status and message in error_of(answer)["message"], answer
        if status == 405:
            assert response.headers["Allow"] == "POST"


async def test_every_request_is_counted_in_the_ledger_and_metrics(server: Any, http: aiohttp.ClientSession) -> None:
    def count(model: str, rpc: str, code: str) -> float:
        labels = {"model": model, "rpc": rpc, "code": code}
        return server.metrics.registry.get_sample_value("millibatch_requests_total", labels) or 0.0

    before = (count("tiny-embed", "http.embeddings", "OK"), count("unknown", "http.embeddings", "NOT_FOUND"),
              count("tiny-reranker", "http.rerank", "OK"), count("tiny-embed", "http.health", "OK"))
    accepted = server.ledger.accepted
    assert (await post(http, "/v1/embeddings", {"input": "hi", "model": "tiny-embed"}))[0] == 200
    assert (await post(http, "/v1/embeddings", {"input": "hi", "model": "nope"}))[0] == 404
    assert (await post(http, "/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["d"]}))[0] == 200
    async with http.get("/health") as response:
        assert response.status == 200
    after = (count("tiny-embed", "http.embeddings", "OK"), count("unknown", "http.embeddings", "NOT_FOUND"),
             count("tiny-reranker", "http.rerank", "OK"), count("tiny-embed", "http.health", "OK"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1]
    assert server.ledger.accepted == accepted + 3  # health probes are not in the ledger
    assert server.ledger.open == 0


async def test_api_keys(tiny_embed_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server([tiny_embed_dir], http_port=free_port(), api_keys=[KEY]) as server:  # noqa: SIM117
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                async with http.post("/v1/embeddings", json={"input": "hi"}, headers=headers) as response:
                    error = error_of(await response.json())
                    assert (response.status, error["type"]) == (401, "authentication_error")
                    assert response.headers["WWW-Authenticate"] == "Bearer"
            async with http.get("/v1/models") as response:
                assert response.status == 401
            async with http.post("/v1/embeddings", json={"input": "hi"},
                                 headers={"Authorization": f"Bearer {KEY}"}) as response:
                assert response.status == 200
            async with http.get("/health") as response:  # probes need no key
                assert response.status == 200
    assert KEY not in caplog.text


async def test_tls_serves_https_only(tiny_embed_dir: Path, pki: dict[str, bytes | Path]) -> None:  # noqa: F811
    folder, ca = pki["dir"], pki["ca"]
    assert isinstance(folder, Path) and isinstance(ca, bytes)
    async with running_server([tiny_embed_dir], http_port=free_port(), tls_cert_file=folder / "server.crt",
                              tls_key_file=folder / "server.key") as server:
        context = ssl.create_default_context(cadata=ca.decode())
        async with aiohttp.ClientSession() as http:
            url = f"https://localhost:{server.http_port}/v1/embeddings"
            async with http.post(url, json={"input": "hi"}, ssl=context) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with http.post(f"http://127.0.0.1:{server.http_port}/v1/embeddings", json={"input": "hi"},
                                     timeout=aiohttp.ClientTimeout(total=5)) as response:
                    await response.read()


async def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], http_port=free_port(), instances=1, max_batch_rows=2) as server:
        batcher = server.registry.models["tiny-embed"].batcher
        batcher.engine = FaultyEngine(batcher.engine, delay=0.05)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:

            async def embed(i: int) -> int | str:
                try:
                    async with http.post("/v1/embeddings", json={"input": [f"text {i}"]},
                                         headers={"X-Request-Timeout": "10"}) as response:
                        await response.read()
                        return response.status
                except aiohttp.ClientConnectionError:
                    return "refused"

            in_flight = [asyncio.create_task(embed(i)) for i in range(8)]
            for _ in range(2000):  # until every request reached its handler
                if server.ledger.accepted >= 8:
                    break
                await asyncio.sleep(0.005)
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.02)
            late = await embed(99)
            outcomes = await asyncio.gather(*in_flight)
            await stopping
    assert outcomes == [200] * 8, outcomes  # accepted before the drain: answered
    assert late in (503, "refused")
    assert server.ledger.cancelled == 0 and server.ledger.open == 0
    assert server.ledger.answered == server.ledger.accepted


async def test_a_client_that_goes_away_cancels_its_request(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], http_port=free_port(), instances=1) as server:
        batcher = server.registry.models["tiny-embed"].batcher
        engine = batcher.engine = FaultyEngine(batcher.engine, delay=0.3)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            with pytest.raises(asyncio.TimeoutError):
                await http.post("/v1/embeddings", json={"input": ["first"]}, timeout=aiohttp.ClientTimeout(total=0.1))
            for _ in range(200):  # the handler sees the closed connection and is cancelled
                if server.ledger.cancelled:
                    break
                await asyncio.sleep(0.01)
            assert server.ledger.cancelled == 1 and server.ledger.open == 0
            engine.delay = 0.0
            async with http.post("/v1/embeddings", json={"input": "next"}) as response:
                assert response.status == 200  # and the server serves on
