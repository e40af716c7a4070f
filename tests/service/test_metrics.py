"""Metrics endpoint and logs of a real server: names, labels and counts after known traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from millibatch.client import AsyncClient
from millibatch.engines.gpu_info import GpuStats
from millibatch.service.logs import JsonFormatter
from millibatch.service.metrics import GpuCollector
from millibatch.v1 import inference_pb2 as pb
from tests.helpers import running_server


def free_port() -> int:
    """A loopback port that was free a moment ago (the metrics port cannot be 0: 0 disables it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_requests_batches_and_timings(tiny_embed_dir: Path) -> None:
    port = free_port()
    async with running_server([tiny_embed_dir], metrics_port=port) as server:
        assert server.metrics_port == port
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            await asyncio.gather(*(client.embed(["hello world", "a b c"]) for _ in range(5)))
            for bad in (pb.EmbedRequest(inputs=[]), pb.EmbedRequest(inputs=["x"], model="nope")):
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.inference.Embed(bad, timeout=10)
        samples = await asyncio.to_thread(scrape, port)
    ok = value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="OK")
    assert ok == 5
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="INVALID_ARGUMENT") == 1
    # Unknown model names share one label value so clients cannot blow up the series count.
    assert value(samples, "millibatch_requests_total", model="unknown", rpc="Embed", code="NOT_FOUND") == 1
    assert value(samples, "millibatch_request_duration_seconds_count", model="tiny-embed", rpc="Embed") == 6
    assert value(samples, "millibatch_queue_duration_seconds_count", model="tiny-embed") == 5
    assert value(samples, "millibatch_tokenize_duration_seconds_count", model="tiny-embed") == 5
    # 10 rows in batches: rows summed over batches equal rows sent; tokens: (2+2)+(3+2) per request.
    assert value(samples, "millibatch_batch_rows_sum", model="tiny-embed") == 10
    assert value(samples, "millibatch_tokens_total", model="tiny-embed") == 5 * (4 + 5)
    batches = value(samples, "millibatch_batch_rows_count", model="tiny-embed")
    assert batches >= 1
    assert value(samples, "millibatch_inference_duration_seconds_count", model="tiny-embed") == batches
    assert value(samples, "millibatch_batch_padding_ratio_count", model="tiny-embed") == batches
    assert value(samples, "millibatch_engine_busy_seconds_total", model="tiny-embed", instance="0") > 0
    assert value(samples, "millibatch_model_load_seconds", model="tiny-embed") > 0
    assert value(samples, "millibatch_queue_rows", model="tiny-embed") == 0
    assert value(samples, "millibatch_in_flight_rows", model="tiny-embed") == 0
    assert any(name == "millibatch_model_info" and dict(labels)["model"] == "tiny-embed"
               for name, labels in samples)


async def test_queue_full_is_counted_as_rejected(tiny_embed_dir: Path) -> None:
    port = free_port()
    # A tiny queue and a long batching delay: concurrent requests find the queue full.
    async with running_server([tiny_embed_dir], metrics_port=port, max_queue_rows=2, max_delay_ms=200) as server:
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            outcomes = await asyncio.gather(*(client.embed(["a", "b"]) for _ in range(8)), return_exceptions=True)
        samples = await asyncio.to_thread(scrape, port)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert failures, "expected some requests to find the queue full"
    assert all(isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               for f in failures)
    rejected = value(samples, "millibatch_rejected_rows_total", model="tiny-embed", reason="queue_full")
    assert rejected == 2 * len(failures)
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed",
                 code="RESOURCE_EXHAUSTED") == len(failures)
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="OK") == 8 - len(failures)


async def test_a_call_refused_before_tokenizing_is_counted_once_with_its_reason(tiny_embed_dir: Path) -> None:
    # Admission sees a queue that outlasts any deadline: Embed refuses in its first lines (status.refuse,
    # no exception through the edge), and the edge still counts the call with its status.
    port = free_port()
    async with running_server([tiny_embed_dir], metrics_port=port) as server:
        model = next(iter(server.registry.models.values()))
        model.batcher.admission.queued_seconds = 1e9
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.inference.Embed(pb.EmbedRequest(inputs=["hello"]), timeout=5)
        samples = await asyncio.to_thread(scrape, port)
        assert server.ledger.open == 0 and server.ledger.answered >= 1
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server busy" in (refused.value.details() or "")
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="RESOURCE_EXHAUSTED") == 1
    assert value(samples, "millibatch_request_duration_seconds_count", model="tiny-embed", rpc="Embed") == 1
    assert value(samples, "millibatch_rejected_requests_total", model="tiny-embed", reason="overloaded") == 1
    assert value(samples, "millibatch_rejected_rows_total", model="tiny-embed", reason="overloaded") == 1
    assert value(samples, "millibatch_tokenize_duration_seconds_count", model="tiny-embed") == 0


async def test_calls_in_progress_and_the_concurrent_call_limit_are_exported(tiny_embed_dir: Path) -> None:
    port = free_port()
    gate = threading.Event()
    async with running_server([tiny_embed_dir], metrics_port=port, max_concurrent_calls=3) as server:
        model = next(iter(server.registry.models.values()))
        engine = model.batcher.engine
        inner = engine.run

        def held(inputs: Any, instance: int) -> Any:  # the engine waits until the test lets it go
            gate.wait(10)
            return inner(inputs, instance)

        engine.run = held  # type: ignore[method-assign]
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            calls = [asyncio.ensure_future(client.embed([f"call {i}"])) for i in range(3)]
            for _ in range(100):
                samples = await asyncio.to_thread(scrape, port)
                if value(samples, "millibatch_calls_in_progress") == 3:
                    break
                await asyncio.sleep(0.05)
            assert value(samples, "millibatch_calls_in_progress") == 3
            assert value(samples, "millibatch_max_concurrent_calls") == 3
            # A fourth call is refused by gRPC itself, with its reason, and never reaches a handler.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.inference.Embed(pb.EmbedRequest(inputs=["one too many"]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == "Concurrent RPC limit exceeded!"
            gate.set()
            await asyncio.gather(*calls)
        samples = await asyncio.to_thread(scrape, port)
    assert value(samples, "millibatch_calls_in_progress") == 0
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="OK") == 3
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="Embed", code="RESOURCE_EXHAUSTED") == 0


async def test_metrics_port_zero_serves_nothing(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], metrics_port=0) as server:
        assert server.metrics_port == 0


def test_gpu_collector_is_silent_without_a_gpu() -> None:
    collector = GpuCollector()
    if collector.available:
        pytest.skip("a GPU is present; this checks the no-GPU path")
    assert list(collector.collect()) == []


def test_gpu_collector_exports_what_nvml_reports() -> None:
    reading = [GpuStats(index=0, name="H100", utilization_percent=37.0, memory_used_bytes=5 << 30,
                        memory_total_bytes=80 << 30)]
    families = {f.name: f for f in GpuCollector(read=lambda: reading).collect()}
    assert families["millibatch_gpu_utilization_ratio"].samples[0].value == 0.37
    assert families["millibatch_gpu_memory_used_bytes"].samples[0].value == float(5 << 30)
    assert families["millibatch_gpu_memory_total_bytes"].samples[0].labels == {"gpu": "0"}


class Records(logging.Handler):
    """Keeps formatted JSON lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_logs_describe_start_up_and_failed_requests_without_secrets(tiny_embed_dir: Path) -> None:
    records = Records()
    logger = logging.getLogger("millibatch")
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with running_server([tiny_embed_dir], api_keys=["s3cret-key"]) as server:
            # With api_keys set the server may demand credentials; send them so the failure is ours.
            metadata = (("x-request-id", "req-42"), ("authorization", "Bearer s3cret-key"))
            async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.inference.Embed(pb.EmbedRequest(inputs=[]), metadata=metadata, timeout=10)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    text = json.dumps(records.lines)
    assert "s3cret-key" not in text
    settings = next(line for line in records.lines if line["message"] == "settings")["settings"]
    assert isinstance(settings, dict)
    assert settings["models"] == [str(tiny_embed_dir)]
    assert "max_batch_rows" in settings
    loaded = next(line for line in records.lines if str(line["message"]).startswith("loaded model tiny-embed"))
    for word in ("engine=onnxruntime", "device=cpu", "precision="):
        assert word in str(loaded["message"])
    failed = [line for line in records.lines if line["message"] == "request failed"]
    assert len(failed) == 1
    assert failed[0]["request_id"] == "req-42"
    assert failed[0]["status"] == "INVALID_ARGUMENT"
    assert failed[0]["rpc"] == "Embed"


async def test_every_door_is_counted_kserve_models_and_health_included(tiny_embed_dir: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from millibatch.kserve import grpc_service_pb2 as v2
    from millibatch.kserve import grpc_service_pb2_grpc
    from millibatch.v1 import models_pb2, models_pb2_grpc
    from tests.service.kserve.test_raw_requests import text_request

    port = free_port()
    async with running_server([tiny_embed_dir], metrics_port=port) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await kserve.ModelInfer(text_request(["hello world"]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):  # unknown model: counted under "unknown"
                await kserve.ModelInfer(v2.ModelInferRequest(model_name="nope"), timeout=10)
            models = models_pb2_grpc.ModelsStub(channel)
            await models.ListModels(models_pb2.ListModelsRequest(), timeout=10)
            await models.DescribeModel(models_pb2.DescribeModelRequest(model="tiny-embed"), timeout=10)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            ledger = server.ledger
            accepted = ledger.accepted
        samples = await asyncio.to_thread(scrape, port)
    for rpc in ("v2.ModelInfer", "ListModels", "DescribeModel"):
        assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc=rpc, code="OK") == 1, rpc
        assert value(samples, "millibatch_request_duration_seconds_count", model="tiny-embed", rpc=rpc) == 1, rpc
    assert value(samples, "millibatch_requests_total", model="unknown", rpc="v2.ModelInfer", code="NOT_FOUND") == 1
    assert value(samples, "millibatch_requests_total", model="tiny-embed", rpc="health.Check", code="OK") == 1
    # The KServe inference went through the same batcher and stage metrics as Embed does.
    assert value(samples, "millibatch_tokenize_duration_seconds_count", model="tiny-embed") == 1
    assert value(samples, "millibatch_batch_rows_sum", model="tiny-embed") == 1
    # Health probes are counted, but are not work in the drain's ledger.
    assert accepted == 4
