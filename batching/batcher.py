"""The batcher: one asyncio task owns the scheduler and hands batches to free engine instances.

Callers `submit` rows and await the item's future. Admission is decided at once (never an unbounded
wait); batches are formed only when an instance is free, so they grow naturally under load, plus one
full batch prepared ahead while every instance is busy. Engine calls run on the instances' own threads
(`batching.workers`), so the event loop keeps accepting, tokenizing and answering meanwhile, and an
instance that finishes starts on the prepared batch without waiting for the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from millibatch.batching.collate import collate
from millibatch.batching.cost_model import CostModel
from millibatch.batching.profile import measure, profile_shapes
from millibatch.batching.scheduler import BatchLimits, Decision, Scheduler
from millibatch.batching.work import PendingRow, Row, RowResult, WorkItem
from millibatch.batching.workers import EngineWorkers, Job
from millibatch.engines.base import Engine, EngineInputs, FloatArray, synthetic_inputs
from millibatch.errors import DeadlineUnmeetable, EngineFailure, InvalidInput, NotServing, QueueFull

log = logging.getLogger("millibatch.batching")
#: Weight of each new answer-lag sample when it is below the estimate (see Batcher._answered).
ANSWER_LAG_DECAY = 0.02


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
    #: Time spent inside engine calls, summed over instances (utilization = this / (wall x instances)).
    engine_seconds: float = 0.0

    def batch_done(self, record: BatchRecord) -> None:
        self.batches += 1
        self.rows += record.rows
        self.real_tokens += record.real_tokens
        self.padded_tokens += record.rows * record.padded_length
        self.engine_seconds += record.engine_seconds

    def shed(self, item: WorkItem, reason: str) -> None:
        self.requests_shed += 1

    def rejected(self, rows: int, reason: str) -> None:
        self.requests_rejected += 1


class _Observers(BatchObserver):
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


class Batcher:
    """Deadline-aware micro-batcher for one model."""

    def __init__(
        self,
        engine: Engine,
        limits: BatchLimits,
        *,
        max_queue_rows: int = 2048,
        watchdog_seconds: float = 30.0,
        cost_model: CostModel | None = None,
        observer: BatchObserver | None = None,
        on_unhealthy: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.cost_model = cost_model or CostModel()
        self.scheduler = Scheduler(limits, self.cost_model, engine.padded_length)
        self.max_queue_rows = max_queue_rows
        self.watchdog_seconds = watchdog_seconds
        self.counters = BatchCounters()
        self._observer = _Observers(self.counters, observer) if observer else self.counters
        self.on_unhealthy = on_unhealthy
        self._clock = clock
        self._instances = engine.info.instances
        self._workers: EngineWorkers | None = None  # started with the loop, in `start`
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever a batch finishes or items are shed
        #: Jobs handed to the workers and not yet settled: running, or prepared ahead and waiting.
        self._out: set[Job] = set()
        #: Instances whose thread is stuck in a hung engine call; they take no more work.
        self._hung = 0
        self._answer_lag = 0.0  # see _answered
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._draining = False
        self._healthy = True
        self._batch_ids = itertools.count(1)
        self.in_flight_rows = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def warm_up(self, max_length: int, profile: bool = True) -> None:
        """Run every instance once and, with `profile`, fit the cost model to measured shapes.
        Blocking: call before serving (or in a thread)."""
        for instance in range(self.engine.info.instances):
            self.engine.run(synthetic_inputs(1, self.engine.padded_length(8)), instance)
        if profile:
            shapes = profile_shapes(self.limits, max_length, self.engine)
            self.cost_model.fit_profile(measure(self.engine, shapes))

    async def start(self) -> None:
        """Begin accepting and dispatching."""
        # Through `self.engine` at call time, not a bound method: the engine may be swapped (tests inject faults).
        self._workers = EngineWorkers(lambda inputs, instance: self.engine.run(inputs, instance), self._instances,
                                      asyncio.get_running_loop(), self._clock or time.monotonic,
                                      self._job_done, self._job_stale)
        self._accepting = True
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="batcher")

    async def stop(self, grace: float) -> None:
        """Refuse new work, let queued and running work finish for up to `grace` seconds, then fail
        whatever is left with UNAVAILABLE."""
        self._accepting = False
        self._draining = True
        self._wake.set()
        deadline = self._now() + grace
        while not self.idle and self._now() < deadline:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), max(0.0, deadline - self._now()))
        for item in self._take_waiting():
            self._fail(item, NotServing("server is shutting down"))
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._workers is not None:
            self._workers.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def idle(self) -> bool:
        return not self.scheduler.queued_rows and not self._out

    # -- submission ------------------------------------------------------------------------------

    def submit(self, rows: list[Row], deadline: float) -> WorkItem:
        """Admit `rows` as one request or raise at once (QueueFull, NotServing, DeadlineUnmeetable)."""
        if not self._accepting or not self._healthy:
            raise NotServing("model is not accepting requests" if self._healthy else "model is unhealthy")
        if not rows:
            raise InvalidInput("no inputs")
        count = len(rows)
        if count > self.max_queue_rows:
            raise InvalidInput(f"request has {count} inputs; this model queues at most {self.max_queue_rows}")
        if self.scheduler.queued_rows + count > self.max_queue_rows:
            self._observer.rejected(count, "queue_full")
            raise QueueFull(
                f"queue full ({self.scheduler.queued_rows} of {self.max_queue_rows} rows waiting); retry later"
            )
        now = self._now()
        if deadline <= now:
            self._observer.rejected(count, "deadline")
            raise DeadlineUnmeetable("deadline already passed when the request was queued")
        loop = asyncio.get_running_loop()
        item = WorkItem(rows=rows, deadline=deadline, future=loop.create_future(), enqueued_at=now)
        self.scheduler.add(item, now)
        item.future.add_done_callback(lambda _f: self.scheduler.forget(item) if item.queued else None)
        self._wake.set()
        return item

    # -- dispatch --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            if self._busy >= self._instances:
                # Every instance is busy: prepare the next batch now if it is already full (waiting
                # cannot improve it), so the instance that frees first starts on it at once.
                if self._busy == self._instances and self.scheduler.queued_rows:
                    decision = self.scheduler.next(self._now(), only_full=True)
                    self._shed(decision)
                    if decision.batch:
                        self._submit(decision.batch, self._collate(decision))
                await self._wake.wait()
                continue
            if not self.scheduler.queued_rows:
                await self._wake.wait()
                continue
            decision = self.scheduler.next(self._now(), flush=self._draining)
            self._shed(decision)
            if decision.batch:
                self._submit(decision.batch, self._collate(decision))
            elif decision.wait_until is not None:
                timeout = max(0.0, decision.wait_until - self._now())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            elif not decision.shed:
                await self._wake.wait()

    def _shed(self, decision: Decision) -> None:
        for item in decision.shed:
            self._drop(item, "deadline", "deadline cannot be met; request dropped before compute")
        if decision.shed:
            self._settled.set()

    @staticmethod
    def _collate(decision: Decision) -> EngineInputs:
        return collate([p.item.rows[p.index] for p in decision.batch], decision.padded_length)

    @property
    def _busy(self) -> int:
        """Instances taken: by jobs out (running, or one prepared ahead) and by hung calls."""
        return len(self._out) + self._hung

    def _time_needed(self, rows: int, padded_length: int) -> float:
        """Seconds a batch needs before its deadline: predicted run time plus the scheduler's margin."""
        return self.cost_model.predict(rows, padded_length) + self.scheduler.margin

    def _submit(self, batch: list[PendingRow], inputs: EngineInputs, batch_id: int | None = None) -> None:
        """Hand a batch to the engine threads. One submitted while no instance is free waits, so it is
        checked again when it would start."""
        assert self._workers is not None
        job = Job(next(self._batch_ids) if batch_id is None else batch_id, batch, inputs)
        if self._busy >= self._instances:
            job.start_by = min(p.deadline for p in batch) - self._time_needed(len(batch), inputs.padded_length)
        self.in_flight_rows += len(batch)
        self._out.add(job)
        job.watchdog = asyncio.get_running_loop().call_later(self.watchdog_seconds, self._watch, job)
        self._workers.submit(job)

    def _release(self, job: Job) -> None:
        """`job` is no longer out: it finished, hung, went stale or was withdrawn."""
        job.settled = True
        self._out.discard(job)
        self.in_flight_rows -= len(job.batch)
        if job.watchdog is not None:
            job.watchdog.cancel()
        self._wake.set()
        self._settled.set()

    def _job_stale(self, job: Job) -> None:
        """A batch prepared ahead could not start as formed: drop rows whose caller left or whose
        deadline can no longer be met (no compute spent on them), and run the rest now."""
        if job.settled:
            return
        self._release(job)
        finish = self._now() + self._time_needed(len(job.batch), job.inputs.padded_length)
        keep = []
        for p in job.batch:
            if p.item.live and finish > p.deadline:
                self._drop(p.item, "deadline", "deadline cannot be met; request dropped before compute")
            if p.item.live:
                keep.append(p)
        if keep:
            decision = Decision(batch=keep, padded_length=job.inputs.padded_length)
            self._submit(keep, self._collate(decision), job.batch_id)

    def _watch(self, job: Job) -> None:
        """Watchdog: a job that has been inside the engine for `watchdog_seconds` is hung."""
        if job.settled:
            return
        loop = asyncio.get_running_loop()
        if job.started is None:  # still waiting for an instance: look again later
            job.watchdog = loop.call_later(self.watchdog_seconds, self._watch, job)
            return
        running = time.perf_counter() - job.started_perf
        if running < self.watchdog_seconds:
            job.watchdog = loop.call_later(self.watchdog_seconds - running, self._watch, job)
            return
        self._hung += 1  # its thread still holds the instance
        self._release(job)
        log.error("engine call hung for over %.1fs on batch %d; marking model unhealthy",
                  self.watchdog_seconds, job.batch_id)
        error = EngineFailure("the engine failed on this request's batch")
        for p in job.batch:
            self._fail(p.item, error)
        self._observer.batch_done(self._record(job, running, ok=False))
        self._mark_unhealthy(f"engine call exceeded the {self.watchdog_seconds:.1f}s watchdog")

    def _job_done(self, job: Job) -> None:
        """A worker finished `job`: answer its rows (or fail them) and account for it."""
        if job.settled:  # the watchdog gave up on it already
            return
        self._release(job)
        seconds = time.perf_counter() - job.started_perf
        finished = self._now()
        for p in job.batch:
            p.item.batch_ids.append(job.batch_id)
            if job.started is not None:
                first = p.item.first_batched_at
                p.item.first_batched_at = job.started if first is None else min(first, job.started)
        outputs = job.outputs
        ok = False
        if job.error is not None:
            log.error("engine failed on batch %d (%d rows x %d tokens)", job.batch_id, len(job.batch),
                      job.inputs.padded_length, exc_info=job.error)
        elif outputs is not None:
            try:
                self._check_outputs(outputs, len(job.batch))
                ok = True
            except ValueError:
                log.exception("engine returned bad outputs on batch %d", job.batch_id)
        if ok and outputs is not None:
            self.cost_model.observe(len(job.batch), job.inputs.padded_length, seconds)
            self._deliver(job.batch, outputs, seconds, finished)
        else:
            error = EngineFailure("the engine failed on this request's batch")
            for p in job.batch:
                self._fail(p.item, error)
        self._observer.batch_done(self._record(job, seconds, ok))

    @staticmethod
    def _record(job: Job, seconds: float, ok: bool) -> BatchRecord:
        return BatchRecord(job.batch_id, len(job.batch), job.inputs.padded_length,
                           sum(p.length for p in job.batch), seconds, job.instance, ok, job.engine_seconds)

    def _check_outputs(self, outputs: dict[str, FloatArray], rows: int) -> None:
        for name, value in outputs.items():
            if value.ndim < 1 or value.shape[0] != rows:
                raise ValueError(f"engine output {name!r} has shape {value.shape}, expected {rows} rows")

    def _deliver(self, batch: list[PendingRow], outputs: dict[str, FloatArray], seconds: float,
                 finished: float) -> None:
        seen: set[int] = set()
        for position, p in enumerate(batch):
            item = p.item
            if not item.live:
                continue
            if id(item) not in seen:
                seen.add(id(item))
                item.inference_seconds += seconds
            item.results[p.index] = RowResult(outputs, position, p.length)
            item.remaining -= 1
            if item.remaining == 0:
                item.computed_at = finished
                if finished > item.deadline:
                    self._drop(item, "late", "computed too late for the request's deadline")
                else:
                    item.future.set_result([r for r in item.results if r is not None])
                    # Runs right after the caller's own wake-up: measures result-to-answer time.
                    item.future.add_done_callback(functools.partial(self._answered, finished))

    def _answered(self, computed_at: float, _future: object = None) -> None:
        """A caller took its result `now - computed_at` after it was computed: under load the event loop
        runs many callers before it, and an answer computed just in time reaches its caller too late.
        Keep that time (a fast-rising, slowly decaying estimate) as extra scheduling margin, so such
        rows are shed before compute instead of after."""
        lag = max(0.0, self._now() - computed_at)
        previous = self._answer_lag
        self._answer_lag = lag if lag > previous else previous + ANSWER_LAG_DECAY * (lag - previous)
        self.scheduler.margin = self.limits.safety + self._answer_lag

    def _drop(self, item: WorkItem, reason: str, why: str) -> None:
        """Shed `item`: counted under `reason`, answered DEADLINE_EXCEEDED with `why`."""
        self._observer.shed(item, reason)
        self._fail(item, DeadlineUnmeetable(why))

    def _fail(self, item: WorkItem, error: Exception) -> None:
        if item.live:
            item.future.set_exception(error)

    def _take_waiting(self) -> list[WorkItem]:
        """Every item not yet running: the queue and the batch prepared ahead."""
        items = self.scheduler.take_all()
        for job in list(self._out):
            if self._workers is not None and self._workers.withdraw(job):
                self._release(job)
                items += [p.item for p in job.batch]
        return items

    def _mark_unhealthy(self, why: str) -> None:
        self._healthy = False
        for item in self._take_waiting():
            self._fail(item, NotServing(f"model became unhealthy: {why}"))
        if self.on_unhealthy is not None:
            self.on_unhealthy(why)

    def stats(self) -> dict[str, float]:
        """Queue depth, in-flight rows and the arrival rate, for metrics and inspection."""
        return {
            "queued_rows": float(self.scheduler.queued_rows),
            "in_flight_rows": float(self.in_flight_rows),
            "arrival_rate": self.scheduler.arrival_rate,
        }


__all__ = ["BatchLimits", "BatchObserver", "BatchRecord", "Batcher"]
