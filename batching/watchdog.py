"""The watchdog: an engine call that has run for `seconds` is hung, and its model unhealthy.

One loop timer looks at the running jobs a few times per watchdog period, instead of a timer armed
and cancelled for every batch: the check is coarse by nature (30 s by default), the request path
should not pay for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from millibatch.batching.workers import Job

#: Looks per watchdog period; a hung call is noticed at most a quarter period late.
CHECKS_PER_PERIOD = 4


class Watchdog:
    """Calls `on_hung(job, seconds)` for each job that has run longer than `seconds` (until it is settled)."""

    def __init__(self, seconds: float, jobs: Callable[[], Iterable[Job]],
                 on_hung: Callable[[Job, float], None]) -> None:
        self.seconds = seconds
        self._jobs = jobs
        self._on_hung = on_hung
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin looking (on the running loop)."""
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(min(1.0, self.seconds / CHECKS_PER_PERIOD), self._look)

    def _look(self) -> None:
        now = time.perf_counter()
        for job in list(self._jobs()):
            if job.started is not None and not job.settled and now - job.started_perf >= self.seconds:
                self._on_hung(job, self.seconds)
        self._schedule()
