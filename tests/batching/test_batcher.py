"""The asyncio batcher with a synthetic engine: exactly-once answers, limits, deadlines, isolation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millibatch.batching.batcher import Batcher
from millibatch.batching.scheduler import BatchLimits
from millibatch.batching.work import RowResult, WorkItem
from millibatch.engines.base import EngineInputs, FloatArray
from millibatch.errors import DeadlineUnmeetable, EngineFailure, MillibatchError, Overloaded, QueueFull
from tests.batching.fakes import SyntheticEngine, exact_cost_model, expected_checksum, make_row, true_cost

LIMITS = BatchLimits(max_rows=8, max_tokens=384, max_delay=0.002)


def new_batcher(engine: SyntheticEngine, limits: BatchLimits = LIMITS, **kwargs: object) -> Batcher:
    return Batcher(engine, limits, cost_model=exact_cost_model(), **kwargs)  # type: ignore[arg-type]


def check_results(item: WorkItem, results: list[RowResult]) -> None:
    assert len(results) == len(item.rows)
    for row, result in zip(item.rows, results, strict=True):
        assert tuple(result.get("checksum").tolist()) == expected_checksum(row)


@dataclass(frozen=True)
class Arrival:
    gap: float
    lengths: list[int]
    budget: float
    cancel_after: float | None


arrivals = st.builds(
    Arrival,
    gap=st.floats(0.0, 0.003),
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    budget=st.floats(0.001, 0.25),
    cancel_after=st.one_of(st.none(), st.floats(0.0, 0.02)),
)


async def run_scenario(plan: list[Arrival], instances: int) -> None:
    engine = SyntheticEngine(instances=instances)
    batcher = new_batcher(engine, max_queue_rows=64)
    await batcher.start()
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[WorkItem, Arrival, asyncio.Task[list[RowResult]]]] = []
    rejected = 0
    seed = 0
    for arrival in plan:
        await asyncio.sleep(arrival.gap)
        rows = [make_row(n, seed + i * 7) for i, n in enumerate(arrival.lengths)]
        seed += 101
        try:
            item = batcher.submit(rows, loop.time() + arrival.budget)
        except (QueueFull, DeadlineUnmeetable):
            rejected += 1
            continue
        waiter = asyncio.ensure_future(item.future)
        if arrival.cancel_after is not None:
            loop.call_later(arrival.cancel_after, waiter.cancel)
        outcomes.append((item, arrival, waiter))
    await asyncio.wait([w for *_, w in outcomes], timeout=5) if outcomes else None
    for item, _arrival, waiter in outcomes:
        assert waiter.done(), "every admitted request is answered"
        if waiter.cancelled():
            continue
        error = waiter.exception()
        if error is None:
            check_results(item, waiter.result())
            assert item.computed_at is not None and item.computed_at <= item.deadline, "never late"
        else:
            assert isinstance(error, MillibatchError)
            assert isinstance(error, DeadlineUnmeetable)
    for rows, length in engine.batches:
        assert rows <= LIMITS.max_rows and rows * length <= LIMITS.max_tokens and length % 8 == 0
    await batcher.stop(grace=1.0)
    assert batcher.scheduler.queued_rows == 0 and batcher.in_flight_rows == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(arrivals, min_size=1, max_size=30), instances=st.integers(1, 2))
def test_every_request_is_answered_once_correctly_and_never_late(plan: list[Arrival], instances: int) -> None:
    asyncio.run(run_scenario(plan, instances))


async def test_large_request_is_split_across_batches_and_reassembled_in_order() -> None:
    engine = SyntheticEngine()
    batcher = new_batcher(engine)
    await batcher.start()
    rows = [make_row(5 + (i % 7), i * 13) for i in range(30)]
    item = batcher.submit(rows, asyncio.get_running_loop().time() + 5)
    check_results(item, await item.future)
    assert len(set(item.batch_ids)) >= 4  # 30 rows, at most 8 per batch
    # Engine time is counted inside the worker thread: at least the synthetic engine's own sleeps.
    assert batcher.counters.batches == len(engine.batches)
    assert batcher.counters.engine_seconds >= sum(true_cost(r, n) for r, n in engine.batches) * engine.speed
    await batcher.stop(grace=1)


async def test_queue_full_is_refused_at_once() -> None:
    batcher = new_batcher(SyntheticEngine(), max_queue_rows=10)
    await batcher.start()
    loop = asyncio.get_running_loop()
    first = batcher.submit([make_row(8)] * 10, loop.time() + 5)
    with pytest.raises(QueueFull, match="queue full"):
        batcher.submit([make_row(8)], loop.time() + 5)
    await first.future
    await batcher.stop(grace=1)


async def test_a_refusal_before_tokenizing_is_returned_and_counted() -> None:
    # Returned, not raised: under overload most calls end here, and the caller ends them itself.
    batcher = new_batcher(SyntheticEngine(), max_queue_rows=256)
    await batcher.start()
    loop = asyncio.get_running_loop()
    assert batcher.refusal(loop.time() + 5, 1, 8) is None  # an idle model: it fits
    queued = [batcher.submit([make_row(64)] * 6, loop.time() + 5) for _ in range(8)]
    wait = batcher.predicted_wait(loop.time())
    assert wait > 0.01
    overloaded = batcher.refusal(loop.time() + wait / 2, 1, 8)
    assert isinstance(overloaded, Overloaded) and overloaded.retry_after is not None and overloaded.retry_after > 0
    assert isinstance(batcher.refusal(loop.time() + 1e-6, 1, 8), DeadlineUnmeetable)
    assert batcher.counters.requests_rejected == 2
    assert batcher.counters.rejections == {"overloaded": [1, 1], "deadline": [1, 1]}
    with pytest.raises(DeadlineUnmeetable):
        batcher.submit([make_row(8)] * 3, loop.time() + 1e-6)
    assert batcher.counters.rejections["deadline"] == [2, 4]  # requests, rows
    await asyncio.gather(*(item.future for item in queued))
    await batcher.stop(grace=1)


class PoisonEngine(SyntheticEngine):
    """Fails any batch containing token id 999."""

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        if (inputs.input_ids == 999).any():
            raise RuntimeError("boom")
        return super().run(inputs, instance)


async def test_engine_failure_fails_only_that_batch() -> None:
    batcher = new_batcher(PoisonEngine(), BatchLimits(max_rows=1, max_delay=0.0))
    await batcher.start()
    deadline = asyncio.get_running_loop().time() + 5
    poison = batcher.submit([make_row(1, 998)], deadline)  # ids = [999]
    healthy = [batcher.submit([make_row(6, i)], deadline) for i in range(5)]
    with pytest.raises(EngineFailure):
        await poison.future
    for item in healthy:
        check_results(item, await item.future)
    await batcher.stop(grace=1)


async def test_hung_engine_trips_the_watchdog_and_fails_queued_work() -> None:
    class HangingEngine(SyntheticEngine):
        def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
            import time

            time.sleep(0.5)
            return super().run(inputs, instance)

    reasons: list[str] = []
    batcher = new_batcher(HangingEngine(), watchdog_seconds=0.1, on_unhealthy=reasons.append)
    await batcher.start()
    deadline = asyncio.get_running_loop().time() + 5
    items = [batcher.submit([make_row(8, i)], deadline) for i in range(3)]
    results = await asyncio.gather(*(i.future for i in items), return_exceptions=True)
    assert all(isinstance(r, MillibatchError) for r in results)
    assert reasons and "watchdog" in reasons[0]
    assert not batcher.healthy
    await batcher.stop(grace=0.1)


async def test_cancelled_caller_rows_are_not_computed() -> None:
    engine = SyntheticEngine()
    batcher = new_batcher(engine, BatchLimits(max_rows=1, max_delay=0.0))
    await batcher.start()
    deadline = asyncio.get_running_loop().time() + 5
    blocker = batcher.submit([make_row(300)], deadline)  # occupies the only instance for ~7 ms
    await asyncio.sleep(0)
    doomed = batcher.submit([make_row(8)] * 5, deadline)
    doomed.future.cancel()
    await blocker.future
    await asyncio.sleep(0.01)
    assert engine.batches == [(1, 304)]
    assert batcher.scheduler.queued_rows == 0
    await batcher.stop(grace=1)


class PerTokenEngine(SyntheticEngine):
    """Also returns a per-token output: each position's token id, padded with -1 like a real graph's
    garbage past the attention mask."""

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        out = super().run(inputs, instance)
        ids = np.where(inputs.attention_mask == 1, inputs.input_ids, -1).astype(np.float32)
        return {**out, "token_ids": ids[:, :, None]}


async def test_per_token_outputs_are_cut_back_to_each_rows_own_length() -> None:
    engine = PerTokenEngine()
    batcher = new_batcher(engine, BatchLimits(max_rows=3, max_tokens=4096, max_delay=0.0))
    await batcher.start()
    rows = [make_row(n, i * 5) for i, n in enumerate([3, 17, 9, 1, 30])]
    item = batcher.submit(rows, asyncio.get_running_loop().time() + 5)
    results = await item.future
    assert len(set(item.batch_ids)) >= 2, "rows rode in batches of different padded lengths"
    for row, result in zip(rows, results, strict=True):
        assert result.get("token_ids").shape[0] >= row.length  # padded to its batch
        np.testing.assert_array_equal(result.tokens("token_ids")[:, 0], row.ids)
    await batcher.stop(grace=1)


def test_outputs_are_plain_numpy() -> None:
    out = SyntheticEngine().run(
        EngineInputs(np.ones((2, 8), np.int64), np.ones((2, 8), np.int64), np.zeros((2, 8), np.int64)), 0
    )
    assert out["checksum"].shape == (2, 2)


async def busy_with_a_full_batch_queued(engine: SyntheticEngine) -> tuple[Batcher, WorkItem, list[WorkItem]]:
    """A started batcher whose only instance runs a ~5 ms batch, with a full batch (4 rows) queued."""
    batcher = new_batcher(engine, BatchLimits(max_rows=4, max_tokens=4096, max_delay=0.0))
    await batcher.start()
    deadline = asyncio.get_running_loop().time() + 5
    running = batcher.submit([make_row(200)], deadline)
    await asyncio.sleep(0.001)
    return batcher, running, [batcher.submit([make_row(8, i)], deadline) for i in range(4)]


async def test_a_full_batch_is_prepared_while_the_instance_is_busy() -> None:
    engine = SyntheticEngine()
    batcher, running, queued = await busy_with_a_full_batch_queued(engine)
    await asyncio.sleep(0.001)
    assert batcher.scheduler.queued_rows == 0, "the full batch left the queue while the engine was busy"
    assert not batcher.idle
    for item in (running, *queued):
        check_results(item, await item.future)
    assert engine.batches == [(1, 200), (4, 8)]
    await batcher.stop(grace=1)


class StampingEngine(SyntheticEngine):
    """Also records when each batch started and ended (perf_counter)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spans: list[tuple[float, float]] = []

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        began = time.perf_counter()
        out = super().run(inputs, instance)
        self.spans.append((began, time.perf_counter()))
        return out


async def test_the_prepared_batch_starts_while_the_event_loop_is_busy() -> None:
    engine = StampingEngine()
    batcher, running, queued = await busy_with_a_full_batch_queued(engine)
    await asyncio.sleep(0)  # the dispatcher prepares the full batch ahead
    blocked_until = time.perf_counter() + 0.05
    time.sleep(0.05)  # noqa: ASYNC251 - the loop is busy (answering other callers) as the first batch ends
    for item in (running, *queued):
        check_results(item, await item.future)
    assert engine.batches == [(1, 200), (4, 8)]
    (_, first_end), (second_start, _) = engine.spans
    assert first_end < second_start < blocked_until, "the engine waited for the event loop between batches"
    await batcher.stop(grace=1)


async def test_a_prepared_batch_whose_deadline_passed_while_waiting_is_shed_uncomputed() -> None:
    engine = SyntheticEngine(speed=4.0)  # the cost model expects a quarter of the time each batch takes
    batcher = new_batcher(engine, BatchLimits(max_rows=4, max_tokens=4096, max_delay=0.0))
    await batcher.start()
    now = asyncio.get_running_loop().time()
    running = batcher.submit([make_row(300)], now + 5)  # ~28 ms on the only instance, 7 ms predicted
    await asyncio.sleep(0.001)
    # Admitted (the running batch should end in ~6 ms, then ~2 ms of work), prepared ahead, and no
    # longer reachable once the running batch really ends.
    doomed = [batcher.submit([make_row(8, i)], asyncio.get_running_loop().time() + 0.012) for i in range(4)]
    check_results(running, await running.future)
    outcomes = await asyncio.gather(*(d.future for d in doomed), return_exceptions=True)
    assert all(isinstance(o, DeadlineUnmeetable) for o in outcomes), outcomes
    assert engine.batches == [(1, 304)]
    assert batcher.counters.requests_shed == 4
    await batcher.stop(grace=1)


async def test_slow_answers_widen_the_margin_so_late_rows_are_shed_before_compute() -> None:
    engine = SyntheticEngine()
    batcher = new_batcher(engine, BatchLimits(max_rows=4, max_tokens=4096, max_delay=0.0))
    await batcher.start()
    loop = asyncio.get_running_loop()
    first = batcher.submit([make_row(8)], loop.time() + 5)
    check_results(first, await first.future)
    # The caller took its answer 30 ms after it was computed (a busy loop): the batcher sees that lag.
    time.sleep(0.03)  # noqa: ASYNC251 - stands for other callers' work on the loop
    await asyncio.sleep(0)
    assert batcher.margin >= 0.025
    # ~1 ms of compute fits a 20 ms deadline, but the answer would not reach the caller in time.
    with pytest.raises(DeadlineUnmeetable, match="to reach it"):
        batcher.submit([make_row(8, 1)], loop.time() + 0.02)
    assert engine.batches == [(1, 8)], "the doomed row was not computed"
    # Prompt answers let the margin decay again.
    for i in range(300):
        item = batcher.submit([make_row(8, i)], loop.time() + 5)
        await item.future
        await asyncio.sleep(0)
    assert batcher.margin < 0.025
    await batcher.stop(grace=1)
