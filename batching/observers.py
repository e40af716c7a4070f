"""What the batcher tells the outside world: one record per engine call, and each shed or refused request.

Observers run on the event loop and must not block; metrics (service/metrics.py) is one, the batcher's
own running totals (`BatchCounters`, shown by DescribeModel) another. Refused requests are only counted
in `BatchCounters`, as plain numbers that metrics read at scrape time: under overload a refusal comes
with nearly every call, and each function it passes through costs it microseconds beside a busy engine
(docs/CALL_COST.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from millibatch.batching.work import WorkItem


@dataclass(frozen=True)
class BatchRecord:
    """What one engine call did, for metrics."""

    batch_id: int
    rows: int
    padded_length: int
    real_tokens: int
    seconds: float
    instance: int
    ok: bool
    #: Time inside the engine call itself, measured in the worker thread (0 if it never returned).
    engine_seconds: float = 0.0
    #: CPU time the calling thread spent in it (less than engine_seconds when the engine had to share).
    engine_cpu_seconds: float = 0.0


class BatchObserver:
    """Hooks for metrics; the default does nothing. Must not block (called on the event loop)."""

    def batch_done(self, record: BatchRecord) -> None: ...

    def shed(self, item: WorkItem, reason: str) -> None: ...


@dataclass
class BatchCounters(BatchObserver):
    """Running totals since start, for inspection (Models service) and benchmarks."""

    batches: int = 0
    rows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    #: Requests dropped because their deadline could not be met.
    requests_shed: int = 0
    #: Requests refused at admission and their rows, by reason (the refusal's `reason`).
    rejections: dict[str, list[int]] = field(default_factory=dict)
    #: Time spent inside engine calls, summed over instances (utilization = this / (wall x instances)),
    #: and the CPU time the calling threads got meanwhile.
    engine_seconds: float = 0.0
    engine_cpu_seconds: float = 0.0

    def batch_done(self, record: BatchRecord) -> None:
        self.batches += 1
        self.rows += record.rows
        self.real_tokens += record.real_tokens
        self.padded_tokens += record.rows * record.padded_length
        self.engine_seconds += record.engine_seconds
        self.engine_cpu_seconds += record.engine_cpu_seconds

    def shed(self, item: WorkItem, reason: str) -> None:
        self.requests_shed += 1

    def rejected(self, rows: int, reason: str) -> None:
        """Count a request of `rows` rows refused at admission for `reason` (the event loop's thread only)."""
        counts = self.rejections.get(reason)
        if counts is None:
            counts = self.rejections[reason] = [0, 0]
        counts[0] += 1
        counts[1] += rows

    @property
    def requests_rejected(self) -> int:
        """Requests refused at admission, for every reason."""
        return sum(requests for requests, _rows in list(self.rejections.values()))


class Observers(BatchObserver):
    """Tells every observer (the batcher's own counters, then metrics) about each event."""

    def __init__(self, *observers: BatchObserver) -> None:
        self._observers = observers

    def batch_done(self, record: BatchRecord) -> None:
        for observer in self._observers:
            observer.batch_done(record)

    def shed(self, item: WorkItem, reason: str) -> None:
        for observer in self._observers:
            observer.shed(item, reason)
