"""The batcher of one model: admission at the door, one dispatcher task, engine threads, delivery.

Callers `submit` rows and await the item's future. Admission decides at once, in O(1), whether the
request can still finish before its deadline behind the work already queued (`batching.admission`),
and `refusal` makes the same decision before the caller spends anything on tokenizing. Admitted
requests go to the dispatcher (`batching.dispatcher`), the one task that owns the scheduler's queue;
engine calls run on the instances' own threads (`batching.workers`), whose results are answered on the
loop (`batching.delivery`) as soon as they arrive. A watchdog marks the model unhealthy when an engine
call hangs (`batching.watchdog`); observers (`batching.observers`) count everything for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable

from millibatch.batching.admission import Admission, AdmissionLength
from millibatch.batching.cost_model import CostModel
from millibatch.batching.delivery import AnswerLag, Delivery
from millibatch.batching.dispatcher import Dispatcher, Event
from millibatch.batching.observers import BatchCounters, BatchObserver, BatchRecord, Observers
from millibatch.batching.profile import measure, profile_shapes
from millibatch.batching.scheduler import BatchLimits, Scheduler
from millibatch.batching.watchdog import Watchdog
from millibatch.batching.work import Row, RowResult, WorkItem
from millibatch.batching.workers import EngineWorkers, Workers
from millibatch.engines.base import Engine, synthetic_inputs
from millibatch.engines.thread_priority import EnginePriority, shorten_time_slice
from millibatch.errors import DeadlineUnmeetable, InvalidInput, MillibatchError, NotServing, Refusal


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
        engine_priority: EnginePriority = "nice",
        admission_length: AdmissionLength = "own",
    ) -> None:
        self.engine = engine
        self.engine_priority: EnginePriority = engine_priority
        self.limits = limits
        self.cost_model = cost_model or CostModel()
        self.scheduler = Scheduler(limits, self.cost_model, engine.padded_length)
        self.max_queue_rows = max_queue_rows
        self.counters = BatchCounters()
        self._observer: BatchObserver = Observers(self.counters, observer) if observer else self.counters
        self.on_unhealthy = on_unhealthy
        self._clock = clock
        # Deadlines are absolute times on the monotonic clock asyncio's loop reads, at full resolution
        # (uvloop's loop.time() counts whole milliseconds, too coarse for a call's stages).
        self._now: Callable[[], float] = clock or time.monotonic
        self._instances = engine.info.instances
        self.admission = Admission(self.cost_model, engine.padded_length, self.scheduler.capacity, max_queue_rows,
                                   self._instances, admission_length)
        self._lag = AnswerLag(lambda: self._now())
        self._delivery = Delivery(self._observer, self._lag, self.admission.outcome)
        self.dispatcher = Dispatcher(self.scheduler, self.cost_model, self.admission, self._delivery, self._lag,
                                     self._observer, self._instances, lambda: self._now(), self._mark_unhealthy)
        self.watchdog = Watchdog(watchdog_seconds, lambda: self.dispatcher.out, self.dispatcher.hung)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._healthy = True

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
        self._loop = loop = asyncio.get_running_loop()
        if self.engine_priority == "nice":
            shorten_time_slice()  # this is the loop's thread: let it preempt the niced engine when it wakes
        dispatcher = self.dispatcher
        dispatcher.workers = self._workers(loop)
        try:
            await asyncio.to_thread(dispatcher.workers.wait_prepared)
        except BaseException:
            dispatcher.workers.close()
            raise
        self._accepting = True
        self._task = asyncio.create_task(dispatcher.run(), name="batcher")
        self.watchdog.start()

    def _workers(self, loop: asyncio.AbstractEventLoop) -> Workers:
        """The engine threads that run the dispatcher's jobs (a simulation replaces them)."""
        dispatcher = self.dispatcher
        # Through `self.engine` at call time, not a bound method: the engine may be swapped (tests inject faults).
        return EngineWorkers(lambda inputs, instance: self.engine.run(inputs, instance), self._instances, loop,
                             self._clock or time.monotonic, dispatcher.finished, dispatcher.stale,
                             self.engine_priority, getattr(self.engine, "prepare_thread", None))

    async def stop(self, grace: float) -> None:
        """Refuse new work, let queued and running work finish for up to `grace` seconds, then fail
        whatever is left with UNAVAILABLE."""
        self._accepting = False
        self.dispatcher.draining = True
        self.dispatcher.wake()
        deadline = self._now() + grace
        while not self.idle and self._now() < deadline:
            self.dispatcher.settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dispatcher.settled.wait(), max(0.0, deadline - self._now()))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The dispatcher task has ended: what still waits is failed from here.
        Delivery.fail(self.dispatcher.take_waiting(), NotServing("server is shutting down"))
        self.watchdog.stop()
        if self.dispatcher.workers is not None:
            self.dispatcher.workers.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def idle(self) -> bool:
        return not self.admission.queued_rows and not self.scheduler.queued_rows and not self.dispatcher.out

    @property
    def in_flight_rows(self) -> int:
        """Rows admitted and not yet answered: waiting, or in a batch out."""
        return self.admission.queued_rows + self.dispatcher.in_flight_rows

    @property
    def margin(self) -> float:
        """Seconds kept between a batch's predicted end and its earliest deadline: the configured safety
        plus how long answers currently take to reach their callers."""
        return self.limits.safety + self._lag.seconds

    def _mark_unhealthy(self, why: str) -> None:
        self._healthy = False
        if self.on_unhealthy is not None:
            self.on_unhealthy(why)

    # -- admission -------------------------------------------------------------------------------

    def predicted_wait(self, now: float) -> float:
        """Seconds a request arriving at `now` would wait for an instance: the engine time reserved by
        the requests queued ahead plus what the batches out have left, spread over the instances."""
        ahead = self.admission.queued_seconds
        for job in self.dispatcher.out:
            ahead += job.predicted if job.started is None else max(0.0, job.predicted - (now - job.started))
        return ahead / max(1, self._instances - self.dispatcher.hung_instances)

    def refusal(self, deadline: float, rows: int, tokens_per_row: int = 1) -> Refusal | None:
        """Why a request of `rows` inputs is refused at once, or None: the queue ahead and the least time
        its own rows need (at `tokens_per_row`, a lower estimate made before tokenizing) would outlast its
        deadline (Overloaded), or the deadline is too short for any answer (DeadlineUnmeetable); counted
        as rejected. Asked before the caller spends anything on the request (decoding aside); the closer
        the estimate, the fewer requests are refused only after tokenizing, by `submit`."""
        now = self._now()
        own = self.admission.least_seconds(rows, tokens_per_row)
        refusal = self.admission.refusal(now, deadline, self.predicted_wait(now), self.margin, own, rows)
        if refusal is not None:
            self.counters.rejected(rows, refusal.reason)
        return refusal

    def submit(self, rows: list[Row], deadline: float) -> WorkItem:
        """Admit `rows` as one request or raise at once (QueueFull, Overloaded, NotServing,
        DeadlineUnmeetable, InvalidInput)."""
        if not self._accepting or not self._healthy:
            raise NotServing("model is not accepting requests" if self._healthy else "model is unhealthy")
        if not rows:
            raise InvalidInput("no inputs")
        count = len(rows)
        if count > self.max_queue_rows:
            raise InvalidInput(f"request has {count} inputs; this model queues at most {self.max_queue_rows}")
        now = self._now()
        try:
            if deadline <= now:
                raise DeadlineUnmeetable("deadline already passed when the request was queued")
            wait = self.predicted_wait(now)
            per_row = self.admission.admit(rows, deadline, now, wait, self.margin)
        except MillibatchError as error:
            self.counters.rejected(count, error.reason)
            raise
        assert self._loop is not None
        item = WorkItem(rows=rows, deadline=deadline, future=self._loop.create_future(), enqueued_at=now,
                        waiting=count, row_seconds=per_row, predicted_wait=wait)
        item.future.add_done_callback(functools.partial(self._settle, item))
        self.dispatcher.post(Event.ARRIVED, item)
        return item

    def check_in_time(self, item: WorkItem) -> None:
        """Raise DeadlineUnmeetable (and count it as late) if `item`'s deadline has passed: called by the
        door just before an answer leaves, since the caller may resume later than its result came."""
        if self._delivery.late(item, self._now()):
            raise DeadlineUnmeetable("finished after the request's deadline")

    def _settle(self, item: WorkItem, future: asyncio.Future[list[RowResult]]) -> None:
        """`item` ended: whatever of it still waits gives its reservation back, and leaves the queue. A
        caller that gave up at its deadline counts as a miss for admission."""
        if future.cancelled() and self._now() >= item.deadline - self.margin:
            self.admission.outcome(True)
        if item.waiting:
            self.admission.dispatched(item, item.waiting)
        if item.queued:
            self.dispatcher.post(Event.FORGET, item)

    def stats(self) -> dict[str, float]:
        """Queue depth, in-flight rows, the arrival rate and admission's state, for metrics."""
        return {
            "queued_rows": float(self.admission.queued_rows),
            "in_flight_rows": float(self.in_flight_rows),
            "arrival_rate": self.scheduler.arrival_rate,
            "wait_correction": self.admission.correction,
            "admission_slack": self.admission.slack,
        }


__all__ = ["BatchLimits", "BatchObserver", "BatchRecord", "Batcher"]
