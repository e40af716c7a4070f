"""Delivery: a finished batch's outputs become each caller's answer, or each caller's error.

Runs on the event loop, the only place futures are resolved. A request whose last row finished after
its deadline is dropped rather than answered late; the time from a row's result to its caller taking it
is measured (`AnswerLag`) so the scheduler can keep that much margin before deadlines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from millibatch.batching.observers import BatchObserver
from millibatch.batching.work import PendingRow, RowResult, WorkItem
from millibatch.engines.base import FloatArray
from millibatch.errors import DeadlineUnmeetable

#: Weight of each new answer-lag sample when it is below the estimate (see AnswerLag).
ANSWER_LAG_DECAY = 0.02


class AnswerLag:
    """How long a computed row waits before its caller takes it: under load the event loop runs many
    callers first, and an answer computed just in time reaches its caller too late. A fast-rising,
    slowly decaying estimate, so such rows are shed before compute instead of after."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: Current estimate in seconds.
        self.seconds = 0.0

    def answered(self, computed_at: float, _future: object = None) -> None:
        """A caller took a result computed at `computed_at` (a future's done callback)."""
        lag = max(0.0, self._clock() - computed_at)
        previous = self.seconds
        self.seconds = lag if lag > previous else previous + ANSWER_LAG_DECAY * (lag - previous)


class Delivery:
    """Resolves the futures of the requests in finished batches."""

    def __init__(self, observer: BatchObserver, lag: AnswerLag, outcome: Callable[[bool], None]) -> None:
        self._observer = observer
        self._lag = lag
        #: Told whether each admitted request was answered in time (False) or missed its deadline (True).
        self._outcome = outcome

    def results(self, batch: list[PendingRow], outputs: dict[str, FloatArray], seconds: float,
                finished: float) -> None:
        """Give each row its output; a request whose rows are all computed is answered, unless it is late."""
        counted: set[int] = set()
        for position, pending in enumerate(batch):
            item = pending.item
            if not item.live:
                continue
            if id(item) not in counted:
                counted.add(id(item))
                item.inference_seconds += seconds
            item.results[pending.index] = RowResult(outputs, position, pending.length)
            item.remaining -= 1
            if item.remaining == 0:
                item.computed_at = finished
                if not self.late(item, finished):
                    self._outcome(False)
                    item.future.set_result([r for r in item.results if r is not None])
                    # Runs right after the caller's own wake-up: measures result-to-answer time.
                    item.future.add_done_callback(functools.partial(self._lag.answered, finished))

    def late(self, item: WorkItem, now: float) -> bool:
        """The one rule on lateness: past its deadline, a request is dropped (DEADLINE_EXCEEDED, counted
        as "late") instead of answered. Checked when its last row is computed, and again by the door
        just before the answer would leave."""
        if now <= item.deadline:
            return False
        self._outcome(True)
        self._observer.shed(item, "late")
        if item.live:
            item.future.set_exception(DeadlineUnmeetable("finished after the request's deadline"))
        return True

    def drop(self, item: WorkItem, reason: str, why: str) -> None:
        """Shed `item`: counted under `reason`, answered DEADLINE_EXCEEDED with `why`."""
        if item.live:
            self._outcome(True)
            self._observer.shed(item, reason)
            item.future.set_exception(DeadlineUnmeetable(why))

    @staticmethod
    def fail(items: list[WorkItem], error: Exception) -> None:
        """Answer every still-waiting item with `error`."""
        for item in items:
            if item.live:
                item.future.set_exception(error)
