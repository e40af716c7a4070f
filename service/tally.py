"""Per-request metrics kept as plain numbers on the event loop and turned into Prometheus series only when
scraped.

Every call, refused ones included, counts itself once and records its latency; prometheus_client takes a
lock for each increment and observation. Under overload most calls are refusals, and on one core the CPU
those microseconds cost is taken from the engine (docs/CALL_COST.md).
Only the event loop's thread writes; the scrape thread copies before reading (a dict or list copy is
one step under the GIL), so a scrape sees each series whole, if a call or two behind.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Histogram:
    """Bucket counts (non-cumulative; the last one is +Inf) and the sum of one latency series."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class RequestTally(Collector):
    """millibatch_requests_total and millibatch_request_duration_seconds."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(buckets)
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    def request_done(self, model: str, rpc: str, code: str, seconds: float) -> None:
        """Count one finished call and its latency (the event loop's thread only)."""
        key = (model, rpc, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._durations.get((model, rpc))
        if histogram is None:
            histogram = self._durations[(model, rpc)] = Histogram(len(self._bounds))
        # Prometheus buckets are "less than or equal": bisect_left puts a value equal to a bound in it.
        histogram.counts[bisect_left(self._bounds, seconds)] += 1
        histogram.total += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("millibatch_requests", "Finished RPCs by model, method and gRPC status.",
                                       labels=["model", "rpc", "code"])
        for (model, rpc, code), count in dict(self._requests).items():
            requests.add_metric([model, rpc, code], count)
        durations = HistogramMetricFamily("millibatch_request_duration_seconds",
                                          "Server-side RPC latency, arrival to answer.", labels=["model", "rpc"])
        for (model, rpc), histogram in dict(self._durations).items():
            counts, total = list(histogram.counts), histogram.total
            buckets, running = [], 0
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))
            durations.add_metric([model, rpc], buckets, total)
        yield from (requests, durations)
