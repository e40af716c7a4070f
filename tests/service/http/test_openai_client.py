"""The official `openai` client against the HTTP door of a real server: its vectors equal Embed's, in
every encoding format, with `dimensions`, from text or token ids; models, and errors as the client
raises them."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import pytest_asyncio

from millibatch.client import AsyncClient, embed_request
from tests.conftest import TINY_PROMPTS
from tests.helpers import free_port, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXTS = ["A man is playing a guitar.", "hello", "The cat sat on the mat, and then it left."]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tiny_embed_dir: Path, tiny_prompted_dir: Path) -> AsyncIterator[Any]:
    async with running_server([tiny_embed_dir, tiny_prompted_dir], http_port=free_port(),
                              max_inputs_per_request=16) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    # The async client: the server runs on this test's event loop, which a blocking client would stall.
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="unused",
                                  max_retries=0, timeout=10) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def grpc_client(server: Any) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


def floats(response: Any) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    assert all(d.object == "embedding" for d in response.data)
    return np.array([d.embedding for d in response.data], dtype=np.float32)


async def test_float_vectors_equal_embed(client: openai.AsyncOpenAI, grpc_client: AsyncClient) -> None:
    response = await client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    np.testing.assert_array_equal(floats(response), np.array(await grpc_client.embed(TEXTS), dtype=np.float32))
    assert (response.object, response.model) == ("list", "tiny-embed")
    embed = await grpc_client.inference.Embed(embed_request(TEXTS), timeout=10)
    assert response.usage.prompt_tokens == response.usage.total_tokens == embed.usage.prompt_tokens


async def test_base64_vectors_equal_embed(client: openai.AsyncOpenAI, grpc_client: AsyncClient) -> None:
    expected = np.array(await grpc_client.embed(TEXTS), dtype=np.float32)
    explicit = await client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in explicit.data])
    np.testing.assert_array_equal(decoded, expected)
    # Without encoding_format the client asks for base64 itself and decodes it.
    default = await client.embeddings.create(model="tiny-embed", input=TEXTS)
    np.testing.assert_array_equal(floats(default), expected)


async def test_dimensions(client: openai.AsyncOpenAI, grpc_client: AsyncClient) -> None:
    expected = np.array(await grpc_client.embed(TEXTS, dimensions=8), dtype=np.float32)
    for encoding_format in ("float", "base64"):
        response = await client.embeddings.create(model="tiny-embed", input=TEXTS, dimensions=8,
                                                  encoding_format=encoding_format)
        got = floats(response) if encoding_format == "float" else np.stack(
            [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data])
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-6)


async def test_one_string_and_token_ids(client: openai.AsyncOpenAI, grpc_client: AsyncClient) -> None:
    expected = np.array(await grpc_client.embed(TEXTS), dtype=np.float32)
    one = await client.embeddings.create(model="tiny-embed", input=TEXTS[1], encoding_format="float")
    np.testing.assert_array_equal(floats(one), expected[1:2])
    # Token ids are the model's own, special tokens included, as Tokenize gives them.
    ids = [list(t.ids) for t in (await grpc_client.tokenize(TEXTS)).results]
    arrays = await client.embeddings.create(model="tiny-embed", input=ids, encoding_format="float")
    np.testing.assert_allclose(floats(arrays), expected, atol=1e-6)
    single = await client.embeddings.create(model="tiny-embed", input=ids[0], encoding_format="float")
    np.testing.assert_allclose(floats(single), expected[:1], atol=1e-6)
    assert single.usage.prompt_tokens == len(ids[0])


async def test_prompts_through_extra_body(client: openai.AsyncOpenAI, grpc_client: AsyncClient) -> None:
    for extra, options in (({}, {}), ({"prompt_name": "passage"}, {"prompt_name": "passage"}),
                           ({"prompt": ""}, {"prompt": ""})):
        response = await client.embeddings.create(model="tiny-prompted", input=TEXTS, encoding_format="float",
                                                  extra_body=extra)
        expected = np.array(await grpc_client.embed(TEXTS, model="tiny-prompted", **options), dtype=np.float32)
        np.testing.assert_array_equal(floats(response), expected)


async def test_models(client: openai.AsyncOpenAI) -> None:
    listed = [m async for m in client.models.list()]
    assert [m.id for m in listed] == ["tiny-embed", "tiny-prompted"]
    assert all(m.object == "model" and m.owned_by == "millibatch" and m.created > 0 for m in listed)
    prompted = await client.models.retrieve("tiny-prompted")
    assert prompted.model_extra is not None
    assert prompted.model_extra["prompts"] == TINY_PROMPTS and prompted.model_extra["dimensions"] == 32
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_errors_as_the_client_raises_them(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="nope", input="hi")
    assert missing.value.code == "model_not_found" and "'nope' is not served" in missing.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        await client.embeddings.create(model="tiny-embed", input="")
    assert empty.value.type == "invalid_request_error" and "is empty" in empty.value.message
    with pytest.raises(openai.BadRequestError) as too_big:
        await client.embeddings.create(model="tiny-embed", input="hi", dimensions=33)
    assert "dimensions is 33" in too_big.value.message
    with pytest.raises(openai.BadRequestError) as zero:
        await client.embeddings.create(model="tiny-embed", input="hi", dimensions=0)
    assert zero.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as vocabulary:
        await client.embeddings.create(model="tiny-embed", input=[[101, 99_999, 102]])
    assert "token id 99999" in vocabulary.value.message


async def test_the_clients_own_timeout_is_the_deadline(server: Any) -> None:
    """The SDK sends its timeout with every attempt (X-Stainless-Read-Timeout): a call whose timeout the
    queue ahead outlasts is refused at once, not computed for a caller that has gone."""
    admission = server.registry.models["tiny-embed"].batcher.admission
    url = f"http://127.0.0.1:{server.http_port}/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=0.15) as hasty, \
            openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10) as patient:
        queued, admission.queued_seconds = admission.queued_seconds, 0.3 * admission.instances  # 0.3 s ahead
        admission.correction = 1.0  # as predicted: earlier calls that waited less than predicted lower it
        try:
            with pytest.raises(openai.RateLimitError) as refused:
                await hasty.embeddings.create(model="tiny-embed", input="hi")
            # 10 s is longer than the server's default deadline (1 s), which the queue ahead fits in.
            answered = await patient.embeddings.create(model="tiny-embed", input="hi")
        finally:
            admission.queued_seconds = queued
    assert refused.value.code == "overloaded" and len(answered.data) == 1


async def test_the_sdk_retries_a_lone_refusal_but_not_while_refusals_persist(server: Any) -> None:
    """A 429 says when to come back, and the SDK retries it twice by default. While refusals persist (the
    refusal watch sets `plane.overloaded`) it also says x-should-retry: false, which the SDK obeys: each
    retry would be one more call to refuse."""
    batcher = server.registry.models["tiny-embed"].batcher
    admission = batcher.admission
    url = f"http://127.0.0.1:{server.http_port}/v1"
    attempts = []
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", timeout=0.15) as sdk:  # its default retries
        assert sdk.max_retries == 2
        queued, admission.queued_seconds = admission.queued_seconds, 0.3 * admission.instances  # 0.3 s ahead
        admission.correction = 1.0  # as predicted: earlier calls that waited less than predicted lower it
        try:
            for overloaded in (False, True):
                server.plane.overloaded = overloaded
                before = batcher.counters.requests_rejected
                with pytest.raises(openai.RateLimitError) as refused:
                    await sdk.embeddings.create(model="tiny-embed", input="hi")
                attempts.append(batcher.counters.requests_rejected - before)
                assert refused.value.response.headers.get("x-should-retry") == ("false" if overloaded else None)
        finally:
            admission.queued_seconds = queued
            server.plane.overloaded = False
    assert attempts == [3, 1]
