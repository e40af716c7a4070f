"""Prometheus metrics: request outcomes and timings, batch shapes, queue state, engine and GPU use.

Everything lives in one `CollectorRegistry` per server (tests run several servers in one process).
The request path only increments counters and observes histograms (a lock and a few adds); queue
depth, in-flight rows and GPU readings are pulled at scrape time by custom collectors, on the HTTP
server's own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from millibatch.batching.batcher import Batcher, BatchObserver, BatchRecord
from millibatch.batching.work import WorkItem
from millibatch.engines.gpu_info import GpuStats, gpu_stats
from millibatch.service.tally import RequestTally

log = logging.getLogger("millibatch.metrics")

#: Latency buckets from 0.5 ms to 10 s, roughly ×2 apart (fine enough for histogram_quantile).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024, 0.032, 0.048, 0.064, 0.096, 0.128,
    0.192, 0.256, 0.384, 0.512, 0.768, 1.0, 1.5, 2.5, 5.0, 10.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
PADDING_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)


class QueueCollector(Collector):
    """Queue depth, in-flight rows, admission's state and the requests it refused, per model, read from
    the batchers at scrape time (refusals are counted by the batcher itself, `BatchCounters.rejected`)."""

    def __init__(self, batchers: Callable[[], Iterable[tuple[str, Batcher]]]) -> None:
        self._batchers = batchers

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("millibatch_queue_rows", "Rows waiting to be batched.", labels=["model"])
        in_flight = GaugeMetricFamily("millibatch_in_flight_rows", "Rows queued or computing.", labels=["model"])
        rate = GaugeMetricFamily("millibatch_arrival_rate_rows", "Recent arrivals in rows per second.",
                                 labels=["model"])
        correction = GaugeMetricFamily(
            "millibatch_admission_wait_correction",
            "How much longer than predicted admitted requests recently waited for their first batch (1 = as "
            "predicted); admission scales its predictions by it.", labels=["model"])
        slack = GaugeMetricFamily(
            "millibatch_admission_slack",
            "Share of a request's remaining time its predicted finish may use to be admitted; shrinks when "
            "admitted requests miss their deadline, regrows while they do not.", labels=["model"])
        rejected = CounterMetricFamily("millibatch_rejected_requests", "Requests refused at admission.",
                                       labels=["model", "reason"])
        rejected_rows = CounterMetricFamily("millibatch_rejected_rows", "Rows of refused requests.",
                                            labels=["model", "reason"])
        for name, batcher in list(self._batchers()):
            stats = batcher.stats()
            queued.add_metric([name], stats["queued_rows"])
            in_flight.add_metric([name], stats["in_flight_rows"])
            rate.add_metric([name], stats["arrival_rate"])
            correction.add_metric([name], stats["wait_correction"])
            slack.add_metric([name], stats["admission_slack"])
            # Written on the event loop, read here: a copy is one step under the GIL.
            for reason, (requests, rows) in dict(batcher.counters.rejections).items():
                rejected.add_metric([name, reason], requests)
                rejected_rows.add_metric([name, reason], rows)
        yield from (queued, in_flight, rate, correction, slack, rejected, rejected_rows)


class GpuCollector(Collector):
    """GPU utilization and memory (engines.gpu_info, NVML); yields nothing without an NVIDIA GPU or driver."""

    def __init__(self, read: Callable[[], list[GpuStats] | None] = gpu_stats) -> None:
        self._read = read
        # Probe once: without a GPU, scrapes skip NVML entirely.
        self._present = read() is not None

    @property
    def available(self) -> bool:
        """True when NVML answered and found at least one GPU."""
        return self._present

    def collect(self) -> Iterator[Metric]:
        stats = self._read() if self._present else None
        if not stats:
            return
        util = GaugeMetricFamily("millibatch_gpu_utilization_ratio", "GPU busy fraction over the last sample.",
                                 labels=["gpu"])
        used = GaugeMetricFamily("millibatch_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("millibatch_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"])
        for gpu in stats:
            util.add_metric([str(gpu.index)], gpu.utilization_percent / 100.0)
            used.add_metric([str(gpu.index)], float(gpu.memory_used_bytes))
            total.add_metric([str(gpu.index)], float(gpu.memory_total_bytes))
        yield from (util, used, total)


class ModelObserver(BatchObserver):
    """The batcher's metric hooks for one model. Labelled series are looked up once: `labels()` costs
    more than the increment itself, and these run for every batch. (Refused requests are read from the
    batcher at scrape time, QueueCollector.)"""

    def __init__(self, metrics: Metrics, model: str) -> None:
        m = self._m = metrics
        self._model = model
        self._rows = m.batch_rows.labels(model)
        self._tokens = m.batch_tokens.labels(model)
        self._padding = m.padding_ratio.labels(model)
        self._inference = m.inference.labels(model)
        self._real_tokens = m.tokens.labels(model)
        self._failures = m.batch_failures.labels(model)
        self._per_instance: dict[int, tuple[Any, Any]] = {}
        self._per_reason: dict[str, tuple[Any, Any]] = {}

    def batch_done(self, record: BatchRecord) -> None:
        padded = record.rows * record.padded_length
        self._rows.observe(record.rows)
        self._tokens.observe(padded)
        if record.real_tokens:
            self._padding.observe(padded / record.real_tokens)
        self._inference.observe(record.seconds)
        busy, cpu = self._instance(record.instance)
        busy.inc(record.seconds)
        cpu.inc(record.engine_cpu_seconds)
        if record.ok:
            self._real_tokens.inc(record.real_tokens)
        else:
            self._failures.inc()

    def shed(self, item: WorkItem, reason: str) -> None:
        requests, rows = self._shed(reason)
        requests.inc()
        rows.inc(len(item.rows))

    def _instance(self, instance: int) -> tuple[Any, Any]:
        series = self._per_instance.get(instance)
        if series is None:
            label = str(instance)
            series = self._per_instance[instance] = (self._m.busy.labels(self._model, label),
                                                      self._m.engine_cpu.labels(self._model, label))
        return series

    def _shed(self, reason: str) -> tuple[Any, Any]:
        series = self._per_reason.get(reason)
        if series is None:
            series = self._per_reason[reason] = (self._m.shed.labels(self._model, reason),
                                                 self._m.shed_rows.labels(self._model, reason))
        return series


class Metrics:
    """All millibatch metrics in one registry, plus the HTTP endpoint that serves them."""

    def __init__(self, batchers: Callable[[], Iterable[tuple[str, Batcher]]] | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # What every call, refused or not, records: plain numbers, no lock per call (service/tally.py).
        self.tally = RequestTally(LATENCY_BUCKETS)
        r.register(self.tally)
        self.queue = Histogram("millibatch_queue_duration_seconds", "Time a request waited before its first batch.",
                               ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokenize = Histogram("millibatch_tokenize_duration_seconds", "Time tokenizing one request.",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("millibatch_inference_duration_seconds", "Engine time of one batch.",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("millibatch_batch_rows", "Rows per batch.", ["model"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_tokens = Histogram("millibatch_batch_padded_tokens", "Padded tokens (rows × length) per batch.",
                                      ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.padding_ratio = Histogram("millibatch_batch_padding_ratio", "Padded tokens / real tokens per batch.",
                                       ["model"], buckets=PADDING_BUCKETS, registry=r)
        self.tokens = Counter("millibatch_tokens_total", "Real (unpadded) tokens computed.", ["model"], registry=r)
        self.batch_failures = Counter("millibatch_batch_failures_total", "Engine calls that raised.", ["model"],
                                      registry=r)
        self.busy = Counter("millibatch_engine_busy_seconds_total", "Seconds each engine instance spent computing.",
                            ["model", "instance"], registry=r)
        self.engine_cpu = Counter(
            "millibatch_engine_cpu_seconds_total",
            "CPU time each engine instance's calling thread got while computing; over busy seconds, the CPU share "
            "the engine kept (1 when it had a core to itself).", ["model", "instance"], registry=r)
        self.shed = Counter("millibatch_shed_requests_total", "Admitted requests dropped before compute.",
                            ["model", "reason"], registry=r)
        self.shed_rows = Counter("millibatch_shed_rows_total", "Rows of shed requests.", ["model", "reason"],
                                 registry=r)
        self.load_seconds = Gauge("millibatch_model_load_seconds", "Seconds spent loading and warming a model.",
                                  ["model"], registry=r)
        self.model_info = Gauge("millibatch_model_info", "Served model and its engine (value is always 1).",
                                ["model", "task", "engine", "device", "precision"], registry=r)
        if batchers is not None:
            r.register(QueueCollector(batchers))
        self.gpu = GpuCollector()
        r.register(self.gpu)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        # Labelled series of the per-request stage timings, looked up once each (see ModelObserver).
        self._stages: dict[str, tuple[Any, Any]] = {}

    def watch_calls(self, in_progress: Callable[[], int], limit: int) -> None:
        """Export the calls in progress (read at scrape time) beside gRPC's concurrent-call limit: calls
        that limit refuses never reach a handler, so these two are how an operator sees it biting."""
        calls = Gauge("millibatch_calls_in_progress", "Calls whose handler is running (every door; health checks "
                      "aside).", registry=self.registry)
        calls.set_function(lambda: float(in_progress()))
        Gauge("millibatch_max_concurrent_calls", "gRPC's concurrent-call limit (0: none); calls beyond it are "
              "refused by gRPC before any handler and are not counted here.", registry=self.registry).set(limit)

    def observer(self, model: str) -> ModelObserver:
        """Batcher hooks that record into these metrics under `model`."""
        return ModelObserver(self, model)

    def work_done(self, model: str, item: WorkItem, tokenize_seconds: float) -> None:
        """Per-request stage timings of a request that went through the batcher."""
        stages = self._stages.get(model)
        if stages is None:
            stages = self._stages[model] = (self.tokenize.labels(model), self.queue.labels(model))
        stages[0].observe(tokenize_seconds)
        if item.first_batched_at is not None:
            stages[1].observe(item.queue_seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics on `host:port` from a daemon thread; returns the bound port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
