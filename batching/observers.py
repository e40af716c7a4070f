"""What the batcher tells the outside world: one record per engine call, and each shed or refused request.

Observers run on the event loop and must not block; metrics (service/metrics.py) is one, the batcher's
own running totals (`BatchCounters`, shown by DescribeModel) another.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def rejected(self, rows: int, reason: str) -> None: ...


@dataclass
class BatchCounters(BatchObserver):
    """Running totals since start, for inspection (Models service) and benchmarks."""

    batches: int = 0
    rows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    #: Requests dropped because their deadline could not be met, and refused at admission.
    requests_shed: int = 0
    requests_rejected: int = 0
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
        self.requests_rejected += 1


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

    def rejected(self, rows: int, reason: str) -> None:
        for observer in self._observers:
            observer.rejected(rows, reason)
