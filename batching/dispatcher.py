"""The dispatcher: the one task that owns the scheduler.

Everything that changes what waits and what runs reaches it as an event in its inbox: a request
admitted at the door, a batch an engine thread finished, a batch prepared ahead that could not start as
formed, a hung engine call, a forgotten (cancelled) request. It forms batches only when an instance is
free, so they grow naturally under load, plus one full batch prepared ahead while every instance is
busy: the instance that frees first starts that one from its own thread, without waiting for the loop.
Callbacks from elsewhere (engine threads, futures, the watchdog) only post events; the answers
themselves are delivered at once by the completion callback, which touches futures, never the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import Enum, auto

from millibatch.batching.admission import Admission
from millibatch.batching.collate import collate
from millibatch.batching.cost_model import CostModel
from millibatch.batching.delivery import AnswerLag, Delivery
from millibatch.batching.observers import BatchObserver, BatchRecord
from millibatch.batching.scheduler import Decision, Scheduler
from millibatch.batching.work import PendingRow, WorkItem
from millibatch.batching.workers import Job, Workers
from millibatch.engines.base import FloatArray
from millibatch.errors import EngineFailure, NotServing

log = logging.getLogger("millibatch.batching")


class Event(Enum):
    """What can reach the dispatcher's inbox."""

    ARRIVED = auto()  # a WorkItem admitted at the door
    FINISHED = auto()  # a Job whose answers were delivered (or failed): release its instance
    STALE = auto()  # a Job prepared ahead that could not start as formed
    HUNG = auto()  # a Job the watchdog gave up on
    FORGET = auto()  # a WorkItem that ended while rows of it were still queued


class Dispatcher:
    """Forms batches from the scheduler's queue and hands them to the engine threads."""

    def __init__(self, scheduler: Scheduler, cost: CostModel, admission: Admission, delivery: Delivery,
                 lag: AnswerLag, observer: BatchObserver, instances: int, clock: Callable[[], float],
                 on_unhealthy: Callable[[str], None]) -> None:
        self.scheduler = scheduler
        self._cost = cost
        self._admission = admission
        self._delivery = delivery
        self._lag = lag
        self._observer = observer
        self._instances = instances
        self._now = clock
        self._on_unhealthy = on_unhealthy
        self.workers: Workers | None = None  # set by the batcher once the loop runs
        self._inbox: deque[tuple[Event, object]] = deque()
        self._wake = asyncio.Event()
        #: Set whenever a batch finishes or requests are shed (a drain waits on it).
        self.settled = asyncio.Event()
        #: Jobs handed to the workers and not yet released: running, or prepared ahead and waiting.
        self.out: set[Job] = set()
        #: Instances whose thread is stuck in a hung engine call; they take no more work.
        self.hung_instances = 0
        #: Rows in jobs out.
        self.in_flight_rows = 0
        #: While draining, batches are sent at once instead of waiting for company.
        self.draining = False
        self._batch_ids = itertools.count(1)

    # -- events, posted from the loop ------------------------------------------------------------

    def post(self, event: Event, subject: object) -> None:
        self._inbox.append((event, subject))
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def finished(self, job: Job) -> None:
        """An engine thread finished `job` (called on the loop): answer its rows and count the batch now,
        then let the task release its instance."""
        if job.settled:  # the watchdog gave up on it already
            return
        job.settled = True
        finished = self._now()
        for pending in job.batch:
            item = pending.item
            item.batch_ids.append(job.batch_id)
            if job.started is not None:
                if item.first_batched_at is None:
                    self._admission.started(item, job.started - item.enqueued_at)
                    item.first_batched_at = job.started
                else:
                    item.first_batched_at = min(item.first_batched_at, job.started)
        ok = False
        if job.error is not None:
            log.error("engine failed on batch %d (%d rows x %d tokens)", job.batch_id, len(job.batch),
                      job.inputs.padded_length, exc_info=job.error)
        elif job.outputs is not None:
            try:
                check_outputs(job.outputs, len(job.batch))
                ok = True
            except ValueError:
                log.exception("engine returned bad outputs on batch %d", job.batch_id)
        job.ok = ok
        if ok and job.outputs is not None:
            self._cost.observe(len(job.batch), job.inputs.padded_length, job.engine_seconds)
            self._delivery.results(job.batch, job.outputs, job.engine_seconds, finished)
        else:
            self._delivery.fail([p.item for p in job.batch], EngineFailure("the engine failed on this request's batch"))
        self._observer.batch_done(record(job, job.engine_seconds))
        self.post(Event.FINISHED, job)

    def stale(self, job: Job) -> None:
        """An engine thread found `job`, prepared ahead, no longer startable as formed (called on the loop)."""
        self.post(Event.STALE, job)

    def hung(self, job: Job, limit: float) -> None:
        """The watchdog found `job` inside the engine for longer than `limit` seconds."""
        self.post(Event.HUNG, (job, limit))

    # -- the task --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Handle events and dispatch until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while self._inbox:
                event, subject = self._inbox.popleft()
                self._handle(event, subject)
            look_again = self._dispatch()
            if self._inbox:
                continue
            timer = None
            if look_again is not None:
                timer = loop.call_later(max(0.0, look_again - self._now()), self._wake.set)
            await self._wake.wait()
            if timer is not None:
                timer.cancel()

    def _handle(self, event: Event, subject: object) -> None:
        if event is Event.ARRIVED:
            assert isinstance(subject, WorkItem)
            self.scheduler.add(subject, self._now())
        elif event is Event.FINISHED:
            assert isinstance(subject, Job)
            self._release(subject)
        elif event is Event.STALE:
            assert isinstance(subject, Job)
            self._restart_stale(subject)
        elif event is Event.HUNG:
            assert isinstance(subject, tuple)
            job, limit = subject
            self._give_up(job, limit)
        elif event is Event.FORGET:
            assert isinstance(subject, WorkItem)
            self.scheduler.forget(subject)

    @property
    def busy(self) -> int:
        """Instances taken: by jobs out (running, or one prepared ahead) and by hung calls."""
        return len(self.out) + self.hung_instances

    def _dispatch(self) -> float | None:
        """Send what should run now; returns when to look again without a new event (None: wait)."""
        self.scheduler.margin = self.scheduler.limits.safety + self._lag.seconds
        while self.scheduler.queued_rows:
            now = self._now()
            if self.busy >= self._instances:
                # Every instance is busy: prepare the next batch now if it is already full (waiting
                # cannot improve it), so the instance that frees first starts on it at once.
                if self.busy == self._instances:
                    decision = self.scheduler.next(now, only_full=True)
                    self._shed(decision)
                    if decision.batch:
                        self._submit(decision.batch, decision.padded_length)
                return None
            decision = self.scheduler.next(now, flush=self.draining)
            self._shed(decision)
            if decision.batch:
                self._submit(decision.batch, decision.padded_length)
            elif decision.wait_until is not None:
                return decision.wait_until
            elif not decision.shed:
                return None
        return None

    def _shed(self, decision: Decision) -> None:
        for item in decision.shed:
            self._delivery.drop(item, "deadline", "deadline cannot be met; request dropped before compute")
        if decision.shed:
            self.settled.set()

    def _submit(self, batch: list[PendingRow], padded_length: int, batch_id: int | None = None) -> None:
        """Hand a batch to the engine threads. One submitted while no instance is free waits, so it is
        checked again when it would start."""
        assert self.workers is not None
        inputs = collate([p.item.rows[p.index] for p in batch], padded_length)
        job = Job(next(self._batch_ids) if batch_id is None else batch_id, batch, inputs,
                  predicted=self._cost.predict(len(batch), padded_length))
        if self.busy >= self._instances:
            job.start_by = min(p.deadline for p in batch) - job.predicted - self.scheduler.margin
        if batch_id is None:
            for pending in batch:
                self._admission.dispatched(pending.item)
        self.in_flight_rows += len(batch)
        self.out.add(job)
        self.workers.submit(job)

    def _release(self, job: Job) -> None:
        """`job` no longer holds an instance: it finished, hung, went stale or was withdrawn."""
        job.settled = True
        if job in self.out:
            self.out.discard(job)
            self.in_flight_rows -= len(job.batch)
        self.settled.set()

    def _restart_stale(self, job: Job) -> None:
        """Drop the rows of a stale job whose caller left or whose deadline can no longer be met (no
        compute spent on them) and run the rest now."""
        if job.settled:
            return
        self._release(job)
        finish = self._now() + job.predicted + self.scheduler.margin
        keep = []
        for pending in job.batch:
            if pending.item.live and finish > pending.deadline:
                self._delivery.drop(pending.item, "deadline", "deadline cannot be met; request dropped before compute")
            if pending.item.live:
                keep.append(pending)
        if keep:
            self._submit(keep, job.inputs.padded_length, job.batch_id)

    def _give_up(self, job: Job, limit: float) -> None:
        """A hung engine call: its thread still holds the instance, its callers get INTERNAL, and the
        model turns unhealthy."""
        if job.settled:
            return
        self.hung_instances += 1
        self._release(job)
        log.error("engine call hung for over %.1fs on batch %d; marking model unhealthy", limit, job.batch_id)
        self._delivery.fail([p.item for p in job.batch], EngineFailure("the engine failed on this request's batch"))
        self._observer.batch_done(record(job, time.perf_counter() - job.started_perf))
        why = f"engine call exceeded the {limit:.1f}s watchdog"
        self._on_unhealthy(why)
        Delivery.fail(self.take_waiting(), NotServing(f"model became unhealthy: {why}"))

    def take_waiting(self) -> list[WorkItem]:
        """Every request not yet running: the queue, the inbox's arrivals, and the batch prepared ahead.
        Only the task itself, or the batcher once the task has ended, may call this."""
        items = self.scheduler.take_all()
        while self._inbox:
            event, subject = self._inbox.popleft()
            if event is Event.ARRIVED:
                assert isinstance(subject, WorkItem)
                items.append(subject)
            elif event in (Event.FINISHED, Event.STALE):
                assert isinstance(subject, Job)
                self._release(subject)
                if event is Event.STALE:
                    items += [p.item for p in subject.batch]
        for job in list(self.out):
            if self.workers is not None and self.workers.withdraw(job):
                self._release(job)
                items += [p.item for p in job.batch]
        return items


def check_outputs(outputs: dict[str, FloatArray], rows: int) -> None:
    """Every output has one entry per row of the batch."""
    for name, value in outputs.items():
        if value.ndim < 1 or value.shape[0] != rows:
            raise ValueError(f"engine output {name!r} has shape {value.shape}, expected {rows} rows")


def record(job: Job, seconds: float) -> BatchRecord:
    """The metrics record of a job that ended (ok or not)."""
    return BatchRecord(job.batch_id, len(job.batch), job.inputs.padded_length, sum(p.length for p in job.batch),
                       seconds, job.instance, job.ok, job.engine_seconds, job.engine_cpu_seconds)
