"""Shared test helpers: tiny random checkpoints and an in-process server."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import numpy as np
from tokenizers import Tokenizer

from millibatch.engines.convert.sources import PACKAGED_MODELS, resolve
from millibatch.service.server import InferenceServer

TINY_LABELS = ["negative", "neutral", "positive"]


def minilm_source() -> Path:
    """The packaged all-MiniLM-L6-v2 checkpoint (its tokenizer.json is reused by tiny models)."""
    return resolve(next(iter(PACKAGED_MODELS))).path


def make_tiny_checkpoint(folder: Path, task: str, max_positions: int = 64, labels: list[str] | None = None) -> Path:
    """A random 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved like a Hugging Face checkpoint;
    a classifier has `labels` (default TINY_LABELS; one label makes a cross-encoder with a single logit)."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=max_positions,
        id2label=dict(enumerate(labels or TINY_LABELS)), label2id={n: i for i, n in enumerate(labels or TINY_LABELS)},
    )
    model = BertForSequenceClassification(config) if task == "classify" else BertModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    shutil.copyfile(minilm_source() / "tokenizer.json", folder / "tokenizer.json")
    return folder


TINY_NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def make_tiny_ner_checkpoint(folder: Path) -> Path:
    """A random 2-layer BertForTokenClassification with the MiniLM tokenizer. Its classifier is scaled
    up (and O favoured a little) so tokens get confident, varied labels: entities to find, O between."""
    import shutil

    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
        id2label=dict(enumerate(TINY_NER_LABELS)), label2id={n: i for i, n in enumerate(TINY_NER_LABELS)},
    )
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    shutil.copyfile(minilm_source() / "tokenizer.json", folder / "tokenizer.json")
    return folder


def make_tiny_mlm_checkpoint(folder: Path) -> Path:
    """A random 2-layer BertForMaskedLM (hidden 32) with the MiniLM tokenizer: a stand-in for a SPLADE checkpoint."""
    import shutil

    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, architectures=["BertForMaskedLM"],
    )
    model = BertForMaskedLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    shutil.copyfile(minilm_source() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@contextlib.asynccontextmanager
async def running_server(models: list[Path], **overrides: object) -> AsyncIterator[InferenceServer]:
    """An InferenceServer on a free loopback port, started and warmed, drained on exit; its HTTP door is
    off unless `http_port` is given (see free_port)."""
    from millibatch.settings import load_settings

    settings = load_settings({
        "models": [str(m) for m in models], "host": "127.0.0.1", "port": 0, "metrics_port": 0, "http_port": 0,
        "profile_on_start": False, "drain_seconds": 2.0, **overrides,
    })
    server = InferenceServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for the HTTP door, whose port 0 means off)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_serving(port: int, timeout: float = 60) -> None:
    """Block until a `millibatch serve` process on `port` reports SERVING through gRPC health."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError("server did not reach SERVING")


async def code_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """How an awaited gRPC call ended: (status, details); (OK, "") when it answered."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def pytorch_splade(checkpoint: Path, texts: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """SPLADE from a masked-LM checkpoint's logits in PyTorch, each text alone (no padding at all):
    the reference for convert --task sparse-embed and for EmbedSparse."""
    import torch
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            rows.append(torch.log1p(torch.relu(logits)).max(dim=0).values.numpy())
    return np.stack(rows)
