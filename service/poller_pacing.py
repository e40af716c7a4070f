"""`grpc_poller_policy: overload`: while the server refuses calls, gRPC's poller thread runs SCHED_BATCH and
a pacer thread bounds how long it can wait.

Under overload calls arrive one by one, and each wake-up of gRPC's poller thread preempts the engine
thread: a refusal then costs the core about 260 µs beside a busy engine, against 180 µs when the poller
waits its turn (SCHED_BATCH, docs/CALL_COST.md). Waiting its turn means waiting for the scheduler's next
tick, up to 4 ms, which puts refusals near their 5 ms bound and doubles a lone call's p99. So the poller
is batched only while admission refuses calls, and a thread with a short time slice wakes every
PACE_SECONDS meanwhile: its wake-up preempts the engine, and the poller runs then with the completions
that have gathered. Measured with `bench.frontend --rate 1000` and a busy engine (docs/CALL_COST.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from millibatch.engines.thread_priority import shorten_time_slice
from millibatch.service.grpc_poller import PollerPolicy, schedule_poller

#: How often the pacer wakes while the poller is batched: the longest the poller waits behind the engine.
PACE_SECONDS = 0.0025
#: How often the refusal count is read.
CHECK_SECONDS = 0.25
#: Refusals per second from which the poller is batched.
ENGAGE_REFUSALS_PER_SECOND = 50.0
#: Seconds without a refusal after which the poller is back to normal.
RELEASE_AFTER_SECONDS = 1.0


class Pacer:
    """A thread that does nothing but wake every `seconds` while started."""

    def __init__(self, seconds: float = PACE_SECONDS) -> None:
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pace, args=(self._stop,), name="poller-pacer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def _pace(self, stop: threading.Event) -> None:
        # A short slice: its wake-up preempts the engine thread at once, as the event loop's does.
        shorten_time_slice()
        while not stop.wait(self._seconds):
            pass


class OverloadPacing:
    """Batches and paces gRPC's poller while calls are being refused; `check` runs every CHECK_SECONDS."""

    def __init__(self, refusals: Callable[[], int], *, clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[PollerPolicy], int] = schedule_poller, pacer: Pacer | None = None) -> None:
        self._refusals = refusals
        self._clock = clock
        self._schedule = schedule
        self._pacer = pacer or Pacer()
        self._last_count = refusals()
        self._last_check = clock()
        self._quiet_since: float | None = None
        #: Whether the poller is batched and paced now.
        self.engaged = False

    def check(self) -> None:
        """Read the refusals since the last check and engage or release."""
        now, count = self._clock(), self._refusals()
        elapsed = max(now - self._last_check, 1e-9)
        new = count - self._last_count
        self._last_count, self._last_check = count, now
        if new / elapsed >= ENGAGE_REFUSALS_PER_SECOND:
            self._quiet_since = None
            if not self.engaged:
                self._schedule("batch")
                self._pacer.start()
                self.engaged = True
        elif self.engaged:
            if new:
                self._quiet_since = None
                return
            if self._quiet_since is None:
                self._quiet_since = now
            if now - self._quiet_since >= RELEASE_AFTER_SECONDS:
                self.release()

    def release(self) -> None:
        """Back to gRPC's own scheduling, the pacer stopped."""
        if self.engaged:
            self._schedule("normal")
            self._pacer.stop()
            self.engaged = False
        self._quiet_since = None

    async def run(self) -> None:
        """Check every CHECK_SECONDS until cancelled; released on the way out."""
        try:
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                self.check()
        finally:
            self.release()
