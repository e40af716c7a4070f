"""ExtractEntities on a real gRPC server with a tiny random NER model: the transformers pipeline's
entities for every aggregation strategy, offsets into non-ASCII text, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from millibatch.client import AsyncClient
from millibatch.engines.convert.convert import ConvertOptions, convert
from millibatch.service.entities import STRATEGIES
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import make_tiny_ner_checkpoint, running_server

# Multi-piece words (mer|##kel, un|##bel|##ie|##va|##bly), accents, Cyrillic pieces, CJK, an emoji
# outside the BMP ([UNK]), punctuation inside names, and rows of different lengths in one batch.
SENTENCES = [
    "Angela Merkel visited Zürich and São Paulo last Tuesday.",
    "Москва и 東京 🙂 are far from Ærøskøbing, said Jean-Baptiste O'Neill.",
    "Unbelievably, the microbiologists reconvened in Reykjavík.",
    "hello",
    "Dr. Oluwaseun Adébáyọ̀ met Ms. Nguyễn Thị Minh Khai in Kraków.",
]


@pytest.fixture(scope="module")
def ner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, converted model directory) of the tiny NER model."""
    root = tmp_path_factory.mktemp("tiny-ner")
    checkpoint = make_tiny_ner_checkpoint(root / "checkpoint")
    out = root / "model"
    convert(ConvertOptions(source=str(checkpoint), output=out, task="token-classify", name="tiny-ner"),
            progress=lambda _: None)
    return checkpoint, out


@pytest.fixture
async def client(ner: tuple[Path, Path], tiny_classify_dir: Path) -> AsyncIterator[AsyncClient]:
    async with running_server([ner[1], tiny_classify_dir], max_inputs_per_request=16) as server, \
            AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


def reference_pipeline(ner: tuple[Path, Path], strategy: str) -> Any:
    """transformers' token-classification pipeline on the PyTorch checkpoint, with the served tokenizer."""
    from transformers import BertForTokenClassification, PreTrainedTokenizerFast, pipeline

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(ner[1] / "tokenizer.json"), unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]",
    )
    model = BertForTokenClassification.from_pretrained(str(ner[0])).eval()
    return pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy=strategy,
                    device="cpu")


async def test_entities_match_the_transformers_pipeline_for_every_strategy(
    client: AsyncClient, ner: tuple[Path, Path]
) -> None:
    served = {}
    for strategy in STRATEGIES:
        served[strategy] = await client.extract_entities(SENTENCES, model="tiny-ner", aggregation=strategy)
        reference = reference_pipeline(ner, strategy)
        key = "entity" if strategy == "none" else "entity_group"
        for sentence, got in zip(SENTENCES, served[strategy], strict=True):
            want = reference(sentence)
            assert [(e.label, e.start, e.end) for e in got] == [(w[key], w["start"], w["end"]) for w in want], (
                strategy, sentence)
            np.testing.assert_allclose([e.score for e in got], [float(w["score"]) for w in want], atol=1e-4)
            assert all(e.text == sentence[e.start : e.end] for e in got)
        assert sum(map(len, served[strategy])) >= len(SENTENCES), f"{strategy}: too few entities to compare"
    # The strategies really disagree on these sentences, so each comparison means something ...
    spans = {s: [[(e.label, e.start, e.end) for e in row] for row in rows] for s, rows in served.items()}
    assert len({repr(v) for v in spans.values()}) == len(STRATEGIES)
    # ... and entities over non-ASCII words were among those located in the original strings.
    assert any(not e.text.isascii() for row in served["first"] for e in row)


async def test_default_strategy_is_simple_and_ignore_labels(client: AsyncClient) -> None:
    default = await client.inference.ExtractEntities(pb.ExtractEntitiesRequest(inputs=SENTENCES[:2]), timeout=10)
    simple = await client.extract_entities(SENTENCES[:2], aggregation="simple")
    assert [list(r.entities) for r in default.results] == simple
    assert default.model == "tiny-ner" and default.usage.prompt_tokens > 0 and default.timing.total_us > 0
    assert "O" not in {e.label for row in simple for e in row}
    everything = await client.extract_entities(SENTENCES[:2], ignore_labels=[])
    assert "O" in {e.label for row in everything for e in row}
    assert sum(map(len, everything)) > sum(map(len, simple))
    no_people = await client.extract_entities(SENTENCES[:2], ignore_labels=["O", "PER"])
    assert {e.label for row in no_people for e in row} == {"LOC"}


async def test_offsets_are_code_points_of_the_original_string(client: AsyncClient) -> None:
    # The emoji is one code point but two UTF-16 units and four UTF-8 bytes: "Zürich" after it is
    # found at its Python string index only if offsets are code points.
    text = "Москва 東京 🙂 Zürich"
    [tokens] = await client.extract_entities([text], aggregation="none", ignore_labels=[])
    assert [e.text for e in tokens] == ["М", "о", "с", "к", "в", "а", "東", "京", "🙂", "Zürich"]
    assert all(text[e.start : e.end] == e.text for e in tokens)
    assert (tokens[-1].start, tokens[-1].end) == (12, 18)


async def test_truncate_finds_entities_only_in_the_part_kept(client: AsyncClient) -> None:
    long_text = "Angela Merkel visited Zürich. " * 20
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.extract_entities([long_text])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in (caught.value.details() or "")
    response = await client.inference.ExtractEntities(pb.ExtractEntitiesRequest(
        inputs=[long_text], truncate=True, aggregation_strategy=pb.AGGREGATION_STRATEGY_NONE,
        ignore_labels=pb.LabelList()), timeout=10)
    assert response.usage.prompt_tokens == 64
    tokens = response.results[0].entities
    assert len(tokens) == 62 and tokens[-1].end < len(long_text)  # every kept token but [CLS] and [SEP]


BAD_REQUESTS = [
    (pb.ExtractEntitiesRequest(model="tiny-classify", inputs=["a"]), grpc.StatusCode.FAILED_PRECONDITION,
     "does classify, not token-classify"),
    (pb.ExtractEntitiesRequest(model="nope", inputs=["a"]), grpc.StatusCode.NOT_FOUND, "nope"),
    (pb.ExtractEntitiesRequest(inputs=[]), grpc.StatusCode.INVALID_ARGUMENT, "inputs is empty"),
    (pb.ExtractEntitiesRequest(inputs=["ok", ""]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[1] is empty"),
    (pb.ExtractEntitiesRequest(inputs=["x"] * 17), grpc.StatusCode.INVALID_ARGUMENT, "limit is 16"),
    (pb.ExtractEntitiesRequest(inputs=["a"], aggregation_strategy=99), grpc.StatusCode.INVALID_ARGUMENT,
     "unknown aggregation_strategy 99"),
]


async def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(client: AsyncClient) -> None:
    for request, code, fragment in BAD_REQUESTS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.inference.ExtractEntities(request, timeout=10)
        assert caught.value.code() == code, request
        assert fragment in (caught.value.details() or ""), caught.value.details()
    # The other RPCs refuse the NER model just as clearly.
    for call in (client.embed(["a"], model="tiny-ner"), client.classify(["a"], model="tiny-ner")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "token-classify" in (caught.value.details() or "")
    assert len(await client.extract_entities(["still serving"])) == 1


async def test_kserve_returns_per_token_outputs_padded_to_the_longest_row(client: AsyncClient) -> None:
    from millibatch.kserve import grpc_service_pb2 as v2
    from millibatch.kserve import grpc_service_pb2_grpc
    from millibatch.service.kserve.tensors import encode_bytes_elements

    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
    metadata = await stub.ModelMetadata(v2.ModelMetadataRequest(name="tiny-ner"), timeout=10)
    assert {o.name: list(o.shape) for o in metadata.outputs} == {
        "token_logits": [-1, -1, 5], "token_probabilities": [-1, -1, 5]}
    texts = ["hello", SENTENCES[0]]  # 3 and 13 tokens: one batch padded to 16
    reply = await stub.ModelInfer(v2.ModelInferRequest(
        model_name="tiny-ner",
        inputs=[v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2])],
        raw_input_contents=[encode_bytes_elements([t.encode() for t in texts])],
    ), timeout=10)
    outputs = {o.name: np.frombuffer(raw, "<f4").reshape(o.shape)
               for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)}
    probabilities = outputs["token_probabilities"]
    assert set(outputs) == {"token_logits", "token_probabilities"} and probabilities.shape == (2, 13, 5)
    np.testing.assert_allclose(probabilities[0, :3].sum(-1), 1.0, atol=1e-5)
    assert not probabilities[0, 3:].any()  # zeros past the short row, not another batch's padding
    # The same numbers ExtractEntities aggregates: each token's best probability.
    [tokens] = await client.extract_entities(texts[1:], aggregation="none", ignore_labels=[])
    np.testing.assert_allclose([t.score for t in tokens], probabilities[1, 1:-1].max(-1), atol=1e-6)


def test_blocking_client_extract_entities(ner: tuple[Path, Path]) -> None:
    from millibatch.client import Client
    from tests.service.background import server_in_thread

    with server_in_thread([ner[1]]) as server, Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        [tokens] = client.extract_entities(["Москва 🙂 Zürich"], aggregation="none", ignore_labels=[])
        assert [t.text for t in tokens] == ["М", "о", "с", "к", "в", "а", "🙂", "Zürich"]
        [entities] = client.extract_entities(["Angela Merkel visited Zürich."])
        assert entities and {e.label for e in entities} <= {"PER", "LOC"}
