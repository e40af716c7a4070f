"""`grpc_poller_policy: overload`: while the server refuses calls, gRPC's poller thread runs SCHED_BATCH and
a pacer thread bounds how long it can wait.

Under overload calls arrive one by one, and each wake-up of gRPC's poller thread preempts the engine
thread: a refusal then costs the core about 260 µs beside a busy engine, against 180 µs when the poller
waits its turn (SCHED_BATCH, docs/CALL_COST.md). Waiting its turn means waiting for the scheduler's next
tick, up to 4 ms, which puts refusals near their 5 ms bound and doubles a lone call's p99. So the poller
is batched only while admission refuses calls (`service.refusal_watch`), and a thread with a short time
slice wakes every PACE_SECONDS meanwhile: its wake-up preempts the engine, and the poller runs then with
the completions that have gathered. Measured with `bench.frontend --rate 1000` and a busy engine
(docs/CALL_COST.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from millibatch.engines.thread_names import name_os_thread
from millibatch.engines.thread_priority import shorten_time_slice
from millibatch.service.grpc_poller import PollerPolicy, schedule_poller

#: How often the pacer wakes while the poller is batched: the longest the poller waits behind the engine.
PACE_SECONDS = 0.0025
#: The pacer thread's name, for Python and the OS.
PACER_NAME = "poller-pacer"


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
        self._thread = threading.Thread(target=self._pace, args=(self._stop,), name=PACER_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def _pace(self, stop: threading.Event) -> None:
        # A short slice: its wake-up preempts the engine thread at once, as the event loop's does.
        shorten_time_slice()
        name_os_thread()
        while not stop.wait(self._seconds):
            pass


class PollerPacing:
    """A RefusalWatch listener: gRPC's poller batched and paced while the watch is engaged."""

    def __init__(self, schedule: Callable[[PollerPolicy], int] = schedule_poller, pacer: Pacer | None = None) -> None:
        self._schedule = schedule
        self._pacer = pacer or Pacer()

    def __call__(self, overloaded: bool) -> None:
        if overloaded:
            self._schedule("batch")
            self._pacer.start()
        else:
            self._schedule("normal")
            self._pacer.stop()
