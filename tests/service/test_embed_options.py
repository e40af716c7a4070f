"""Embed's options on a real server: Matryoshka dimensions, prompts, truncation direction, packed vectors;
and the models' prompts in ListModels / DescribeModel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from millibatch.client import AsyncClient, embed_request
from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import models_pb2
from tests.conftest import TINY_PROMPTS
from tests.helpers import code_of, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXTS = ["A man is playing a guitar.", "hello", "The cat sat on the mat, and then it left."]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tiny_embed_dir: Path, tiny_prompted_dir: Path) -> AsyncIterator[AsyncClient]:
    async with running_server([tiny_embed_dir, tiny_prompted_dir]) as server:  # noqa: SIM117
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
            yield c


async def test_dimensions_cut_and_renormalise(client: AsyncClient) -> None:
    raw = np.array(await client.embed(TEXTS, normalize=False))
    cut = np.array(await client.embed(TEXTS, dimensions=8))
    expected = raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    np.testing.assert_allclose(np.array(await client.embed(TEXTS, dimensions=8, normalize=False)), raw[:, :8])
    whole = await client.inference.Embed(embed_request(TEXTS, dimensions=32), timeout=10)
    assert whole.dimensions == 32
    np.testing.assert_array_equal(np.array([e.values for e in whole.embeddings]),
                                  np.array(await client.embed(TEXTS)))
    response = await client.inference.Embed(embed_request(TEXTS, dimensions=5), timeout=10)
    assert response.dimensions == 5 and all(len(e.values) == 5 for e in response.embeddings)


async def test_dimensions_the_model_cannot_give_are_refused(client: AsyncClient) -> None:
    for bad in (0, 33, 2**32 - 1):
        code, details = await code_of(client.embed(["hi"], dimensions=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert f"dimensions is {bad}" in details and "1 to 32" in details


async def test_every_response_reports_its_dimensions(client: AsyncClient) -> None:
    response = await client.inference.Embed(pb.EmbedRequest(inputs=["hi"]), timeout=10)
    assert response.dimensions == 32


async def test_prompts_are_resolved_with_the_manifest(client: AsyncClient) -> None:
    plain = "tiny-embed"

    async def same(prompted: list[list[float]], texts: list[str]) -> None:
        np.testing.assert_allclose(np.array(prompted), np.array(await client.embed(texts, model=plain)), atol=1e-6)

    await same(await client.embed(TEXTS, model="tiny-prompted"), [f"query: {t}" for t in TEXTS])  # the default
    passage = await client.embed(TEXTS, model="tiny-prompted", prompt_name="passage")
    await same(passage, [f"passage: {t}" for t in TEXTS])
    await same(await client.embed(TEXTS, model="tiny-prompted", prompt=""), TEXTS)  # "" turns the default off
    literal = await client.embed(TEXTS, model=plain, prompt="Represent this: ")
    await same(literal, [f"Represent this: {t}" for t in TEXTS])


async def test_usage_counts_the_prompt_tokens(client: AsyncClient) -> None:
    without = await client.inference.Embed(embed_request(["hello"], model="tiny-prompted", prompt=""), timeout=10)
    default = await client.inference.Embed(embed_request(["hello"], model="tiny-prompted"), timeout=10)
    assert without.usage.prompt_tokens == 3  # [CLS] hello [SEP]
    assert default.usage.prompt_tokens == 3 + 2  # query :


async def test_bad_prompts_are_refused(client: AsyncClient) -> None:
    code, details = await code_of(client.embed(["hi"], model="tiny-prompted", prompt_name="nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no prompt named 'nope'" in details
    assert "passage, query" in details
    code, details = await code_of(client.embed(["hi"], model="tiny-prompted", prompt_name="query", prompt="x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "mutually exclusive" in details
    code, details = await code_of(client.embed(["hi"], prompt_name="query"))  # tiny-embed has no prompts
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "its prompts: none" in details
    code, details = await code_of(client.embed(["hi"], prompt="p" * 60_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "prompt has 60000 characters" in details


async def test_truncation_direction_says_which_end_goes(client: AsyncClient) -> None:
    text = "red " * 100 + "blue " * 100  # one token a word; the model keeps 62 besides [CLS] and [SEP]
    right = await client.embed([text], truncate=True)
    np.testing.assert_allclose(await client.embed([text], truncate=True, truncation_direction="right"), right)
    np.testing.assert_allclose(right, await client.embed(["red " * 62]), atol=1e-6)
    left = await client.embed([text], truncate=True, truncation_direction="left")
    np.testing.assert_allclose(left, await client.embed(["blue " * 62]), atol=1e-6)
    code, details = await code_of(client.embed([text], truncation_direction="left"))  # no truncate: too long
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in details


async def test_packed_vectors_equal_floats_within_their_encoding(client: AsyncClient) -> None:
    floats = np.array(await client.embed(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(await client.embed(TEXTS, encoding="float32"), floats)
    np.testing.assert_allclose(await client.embed(TEXTS, encoding="float16"), floats, atol=1e-3)
    int8 = await client.embed(TEXTS, encoding="int8")
    scales = np.abs(floats).max(axis=1, keepdims=True) / 127
    assert (np.abs(int8 - floats) <= scales / 2 + 1e-7).all()
    np.testing.assert_array_equal(await client.embed(TEXTS, encoding="binary"), (floats > 0).astype(np.uint8))
    # A size that is not a multiple of 8: the response's dimensions say how many bits are real.
    bits = await client.embed(TEXTS, encoding="binary", dimensions=12, normalize=False)
    raw = np.array(await client.embed(TEXTS, normalize=False))
    np.testing.assert_array_equal(bits, (raw[:, :12] > 0).astype(np.uint8))
    response = await client.inference.Embed(embed_request(TEXTS, encoding="int8"), timeout=10)
    assert response.dimensions == 32
    assert all(len(e.packed) == 32 and not e.values and e.scale > 0 for e in response.embeddings)


async def test_unknown_enum_values_are_refused(client: AsyncClient) -> None:
    for request in (pb.EmbedRequest(inputs=["hi"], encoding=9), pb.EmbedRequest(inputs=["hi"], truncation_direction=7)):
        code, details = await code_of(client.inference.Embed(request, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown" in details


async def test_models_list_their_prompts(client: AsyncClient) -> None:
    models = {m.name: m for m in (await client.list_models()).models}
    assert dict(models["tiny-prompted"].prompts) == TINY_PROMPTS
    assert models["tiny-prompted"].default_prompt_name == "query"
    assert dict(models["tiny-embed"].prompts) == {} and models["tiny-embed"].default_prompt_name == ""
    described = await client.models.DescribeModel(models_pb2.DescribeModelRequest(model="tiny-prompted"), timeout=10)
    assert dict(described.prompts) == TINY_PROMPTS
