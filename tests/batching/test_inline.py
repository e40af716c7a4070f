"""A lone request at an idle model runs on the event loop's own thread (`Batcher.inline_seconds`)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from millibatch.batching.batcher import Batcher
from millibatch.batching.scheduler import BatchLimits
from millibatch.batching.work import Row
from millibatch.engines.base import EngineInputs, FloatArray
from millibatch.errors import DeadlineUnmeetable, EngineFailure
from tests.batching.fakes import SyntheticEngine, exact_cost_model, expected_checksum, make_row, true_cost

LIMITS = BatchLimits(max_rows=8, max_tokens=384, max_delay=0.002)
#: Above a lone short row's true cost (1.3 ms at 16 tokens), below a full batch's.
INLINE = 0.004


class ThreadRecordingEngine(SyntheticEngine):
    """Remembers the thread each batch ran on."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.threads: list[threading.Thread] = []

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        self.threads.append(threading.current_thread())
        return super().run(inputs, instance)


class FailingEngine(ThreadRecordingEngine):
    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        super().run(inputs, instance)
        raise RuntimeError("boom")


async def started(engine: SyntheticEngine, limits: BatchLimits = LIMITS, inline: float = INLINE) -> Batcher:
    batcher = Batcher(engine, limits, cost_model=exact_cost_model(), inline_seconds=inline)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_lone_request_at_an_idle_model_is_answered_before_submit_returns() -> None:
    engine = ThreadRecordingEngine()
    batcher = await started(engine)
    rows = [make_row(5, 1), make_row(11, 2)]
    item = batcher.submit(rows, deadline())
    assert item.future.done()
    results = item.future.result()
    assert [tuple(r.get("checksum").tolist()) for r in results] == [expected_checksum(r) for r in rows]
    assert engine.threads == [threading.current_thread()]
    assert engine.batches == [(2, 16)]
    # Accounted as any batch: timings, counters, reservation given back, nothing left in flight.
    assert item.first_batched_at is not None and item.computed_at is not None and item.inference_seconds > 0
    assert item.batch_ids and batcher.counters.batches == 1 and batcher.counters.rows == 2
    assert batcher.admission.queued_rows == 0 and batcher.in_flight_rows == 0 and batcher.idle
    await batcher.stop(grace=1)


async def test_a_request_queues_while_an_instance_is_busy() -> None:
    engine = ThreadRecordingEngine(instances=2)
    batcher = await started(engine)
    first = batcher.submit([make_row(40)] * 8, deadline())  # predicted 7.4 ms, over INLINE: queued
    assert not first.future.done()
    await asyncio.sleep(0.002)  # the dispatcher hands it to an engine thread
    second = batcher.submit([make_row(5)], deadline())
    assert not second.future.done(), "another request is in flight: queued, though an instance is free"
    await first.future
    await second.future
    await asyncio.sleep(0.01)  # both instances released
    third = batcher.submit([make_row(5)], deadline())
    assert third.future.done()
    loop_thread = threading.current_thread()
    assert [thread is loop_thread for thread in engine.threads] == [False, False, True]
    await batcher.stop(grace=1)


@pytest.mark.parametrize(
    ("limits", "rows", "why"),
    [
        (LIMITS, [make_row(40)] * 8, "predicted longer than inline_seconds"),
        (LIMITS, [make_row(4)] * 9, "more rows than one batch holds"),
        (BatchLimits(max_rows=8, max_tokens=64, max_delay=0.002), [make_row(20)] * 3, "over the token budget"),
        (BatchLimits(policy="fifo", max_rows=8, max_tokens=384, max_delay=0.002), [make_row(5)], "fifo waits"),
    ],
)
async def test_what_does_not_run_on_the_loop(limits: BatchLimits, rows: list[Row], why: str) -> None:
    engine = ThreadRecordingEngine()
    batcher = await started(engine, limits)
    item = batcher.submit(rows, deadline())
    assert not item.future.done(), why
    assert len(await item.future) == len(rows)
    assert threading.current_thread() not in engine.threads
    await batcher.stop(grace=1)


async def test_a_request_waits_for_company_where_the_scheduler_would() -> None:
    engine = ThreadRecordingEngine()
    batcher = await started(engine, BatchLimits(max_rows=8, max_tokens=384, max_delay=0.05))
    first = batcher.submit([make_row(5)], deadline())
    assert first.future.done(), "nothing arrived lately: sent at once, so run here"
    for _ in range(3):  # a stream of calls: the scheduler would hold the next one for company
        batcher.scheduler.note_arrivals(10, time.monotonic())
    second = batcher.submit([make_row(5)], deadline())
    assert not second.future.done()
    assert len(await second.future) == 1
    await batcher.stop(grace=1)


async def test_off_by_default() -> None:
    engine = ThreadRecordingEngine()
    batcher = Batcher(engine, LIMITS, cost_model=exact_cost_model())  # type: ignore[arg-type]
    await batcher.start()
    item = batcher.submit([make_row(5)], deadline())
    assert not item.future.done()
    await item.future
    assert threading.current_thread() not in engine.threads
    await batcher.stop(grace=1)


async def test_an_engine_failure_on_the_loop_fails_that_request_only() -> None:
    batcher = await started(FailingEngine())
    failed = batcher.submit([make_row(5)], deadline())
    assert isinstance(failed.future.exception(), EngineFailure)
    assert batcher.counters.batches == 1 and batcher.idle
    batcher.engine = ThreadRecordingEngine()
    assert len(batcher.submit([make_row(5)], deadline()).future.result()) == 1
    await batcher.stop(grace=1)


async def test_a_run_on_the_loop_that_ends_past_the_deadline_is_not_answered() -> None:
    # The engine runs five times slower than the cost model says: admitted, computed, then too late.
    batcher = await started(ThreadRecordingEngine(speed=5.0))
    item = batcher.submit([make_row(16)], deadline(true_cost(1, 16) * 2))
    assert isinstance(item.future.exception(), DeadlineUnmeetable)
    assert batcher.counters.requests_shed == 1 and batcher.idle
    await batcher.stop(grace=1)
