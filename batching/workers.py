"""Engine instance threads that hand batches to each other without waiting for the event loop.

Each instance has its own thread. A finished batch's outputs go to the loop (`on_done`), and the
thread at once takes the next batch from the shared handoff: under load that is the batch the loop
prepared ahead while every instance was busy, so the engine does not sit idle while the loop answers
the previous batch's callers. A batch prepared ahead is checked again when it would start (callers
still waiting, deadlines still reachable); if not, it goes back to the loop (`on_stale`) to be trimmed.
Futures and the scheduler are only ever touched on the loop: threads read, never resolve.

Before its first batch, each thread runs the engine's `prepare_thread(instance)` where it has one, one
thread at a time: ONNX Runtime keeps CUDA graphs per calling thread and captures them in a mode that
fails any other thread's CUDA work meanwhile, so they are captured here, on the serving threads, before
traffic (docs/GPU.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from millibatch.batching.work import PendingRow
from millibatch.engines.base import EngineInputs, FloatArray
from millibatch.engines.thread_names import name_os_thread
from millibatch.engines.thread_priority import EnginePriority, lower_thread_priority


@dataclass(eq=False)
class Job:
    """One batch on its way through an engine instance."""

    batch_id: int
    batch: list[PendingRow]
    inputs: EngineInputs
    #: Engine seconds the cost model predicted for it when it was formed.
    predicted: float = 0.0
    #: For a batch formed while every instance was busy, the latest clock value at which it may start
    #: and still meet every row's predicted deadline: checked again before starting. None: start at once.
    start_by: float | None = None
    # -- filled in by the worker thread --
    instance: int = -1
    #: Batcher clock and perf_counter when the engine call began (None until then).
    started: float | None = None
    started_perf: float = 0.0
    engine_seconds: float = 0.0
    #: CPU time of the engine call's thread (its other intra-op threads not included): against
    #: `engine_seconds` it shows the CPU share the engine got while the call ran.
    engine_cpu_seconds: float = 0.0
    outputs: dict[str, FloatArray] | None = None
    error: BaseException | None = None
    # -- loop side --
    #: The loop has dealt with this job (answered, failed, or given up on it as hung).
    settled: bool = False
    #: Its outputs were good and delivered.
    ok: bool = False

    def fresh(self, now: float) -> bool:
        """May the batch still start at `now`: every caller waiting, every deadline met?"""
        return self.start_by is None or (now <= self.start_by and all(p.item.live for p in self.batch))


class Workers(Protocol):
    """What runs the dispatcher's jobs: the engine threads, or a simulation of them (bench.overload_sim)."""

    def submit(self, job: Job) -> None: ...

    def withdraw(self, job: Job) -> bool: ...

    def wait_prepared(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


class EngineWorkers:
    """One thread per engine instance, pulling jobs from a shared handoff queue."""

    def __init__(
        self,
        run: Callable[[EngineInputs, int], dict[str, FloatArray]],
        instances: int,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        on_done: Callable[[Job], None],
        on_stale: Callable[[Job], None],
        priority: EnginePriority = "nice",
        prepare: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._prepare = prepare
        # One thread prepares at a time; `prepared` is set once every thread has (or one failed).
        self._preparing = threading.Lock()
        self._unprepared = instances
        self._prepare_error: BaseException | None = None
        self.prepared = threading.Event()
        if instances == 0 or prepare is None:
            self.prepared.set()
        self._priority = priority
        self._loop = loop
        self._clock = clock
        self._on_done = on_done
        self._on_stale = on_stale
        self._ready: deque[Job | None] = deque()
        self._available = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, args=(instance,), name=f"engine-{instance}", daemon=True)
            for instance in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    def wait_prepared(self, timeout: float | None = None) -> None:
        """Block until every thread has prepared its instance; raise what a failed preparation raised."""
        if not self.prepared.wait(timeout):
            raise TimeoutError(f"engine threads not prepared after {timeout} s")
        if self._prepare_error is not None:
            raise RuntimeError(f"preparing an engine thread failed: {self._prepare_error}") from self._prepare_error

    def _prepare_thread(self, instance: int) -> None:
        if self._prepare is None:
            return
        with self._preparing:
            try:
                if self._prepare_error is None:
                    self._prepare(instance)
            except BaseException as error:  # reported by wait_prepared; the batcher refuses to start
                self._prepare_error = error
            self._unprepared -= 1
            if self._unprepared == 0 or self._prepare_error is not None:
                self.prepared.set()

    def submit(self, job: Job) -> None:
        """Queue `job` for the first instance that is (or becomes) free."""
        with self._available:
            self._ready.append(job)
            self._available.notify()

    def withdraw(self, job: Job) -> bool:
        """Take back a job no thread has started yet; False if one already has."""
        with self._available:
            try:
                self._ready.remove(job)
            except ValueError:
                return False
            return True

    def close(self) -> None:
        """Let every thread exit once it is idle (a thread stuck in the engine is a daemon)."""
        with self._available:
            self._ready.extend([None] * len(self._threads))
            self._available.notify_all()

    def _take(self) -> Job | None:
        with self._available:
            while not self._ready:
                self._available.wait()
            return self._ready.popleft()

    def _work(self, instance: int) -> None:
        name_os_thread()  # engine-N, as the OS sees it too
        self._prepare_thread(instance)  # at full priority: start-up waits for it
        lower_thread_priority(self._priority)
        while (job := self._take()) is not None:
            if not job.fresh(self._clock()):
                self._post(self._on_stale, job)
                continue
            job.instance = instance
            cpu = time.thread_time()
            job.started_perf = time.perf_counter()  # before `started`: the watchdog reads both
            job.started = self._clock()
            try:
                job.outputs = self._run(job.inputs, instance)
            except BaseException as error:  # reported on the loop; the thread serves on
                job.error = error
            job.engine_seconds = time.perf_counter() - job.started_perf
            job.engine_cpu_seconds = time.thread_time() - cpu
            self._post(self._on_done, job)

    def _post(self, callback: Callable[[Job], None], job: Job) -> None:
        # A closed loop (process exit) raises RuntimeError: nobody is waiting for the answer any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, job)
