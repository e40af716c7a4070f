"""Per-model request counters for ModelStatistics, kept in the units V2 reports (nanoseconds)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from millibatch.batching.work import WorkItem
from millibatch.kserve import grpc_service_pb2 as v2


def nanos(seconds: float) -> int:
    """Seconds as whole nanoseconds, never negative."""
    return max(0, round(seconds * 1e9))


@dataclass
class ModelCounters:
    """What V2 requests to one model did since the server started."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    infer_ns: int = 0
    #: Rows computed (V2 counts inferences per batch element).
    inference_count: int = 0
    #: Engine batches that these requests rode in; a batch shared by two requests counts for each.
    execution_count: int = 0
    #: Wall-clock milliseconds of the last success: a timestamp for people, not for deadlines.
    last_inference_ms: int = 0

    def succeeded(self, item: WorkItem, seconds: float) -> None:
        """Count a request answered after `seconds`."""
        self.success_count += 1
        self.success_ns += nanos(seconds)
        self.queue_ns += nanos(item.queue_seconds)
        self.infer_ns += nanos(item.inference_seconds)
        self.inference_count += len(item.rows)
        self.execution_count += len(set(item.batch_ids))
        self.last_inference_ms = int(time.time() * 1000)

    def failed(self, seconds: float) -> None:
        """Count a request that got an error after `seconds`."""
        self.fail_count += 1
        self.fail_ns += nanos(seconds)

    def to_proto(self, name: str, version: str) -> v2.ModelStatistics:
        """The V2 statistics message."""
        duration = v2.StatisticDuration
        return v2.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=v2.InferStatistics(
                success=duration(count=self.success_count, ns=self.success_ns),
                fail=duration(count=self.fail_count, ns=self.fail_ns),
                queue=duration(count=self.success_count, ns=self.queue_ns),
                compute_infer=duration(count=self.success_count, ns=self.infer_ns),
            ),
        )
