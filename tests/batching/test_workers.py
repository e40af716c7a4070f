"""Engine threads: where they sit under the event loop's scheduling priority, as the batcher is told."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

from millibatch.batching.batcher import Batcher
from millibatch.batching.scheduler import BatchLimits
from millibatch.batching.workers import EngineWorkers, Job
from millibatch.engines.base import EngineInputs, FloatArray, synthetic_inputs
from millibatch.engines.thread_names import os_thread_name
from millibatch.engines.thread_priority import ENGINE_NICE, EnginePriority
from tests.batching.fakes import SyntheticEngine, exact_cost_model, make_row

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


async def engine_thread(priority: EnginePriority) -> tuple[int, int, str]:
    """(scheduling policy, nice, name for the OS) of the thread that runs a batch, under `priority`."""
    seen: list[tuple[int, int, str]] = []

    def run(inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        tid = threading.get_native_id()
        seen.append((os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid), os_thread_name(tid) or ""))
        return {}

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Job] = loop.create_future()
    workers = EngineWorkers(run, 1, loop, time.monotonic, done.set_result, done.set_result, priority)
    try:
        workers.submit(Job(batch_id=1, batch=[], inputs=synthetic_inputs(1, 8)))
        job = await asyncio.wait_for(done, 10)
    finally:
        workers.close()
    assert job.error is None and len(seen) == 1
    return seen[0]


async def test_nice_engine_threads_run_below_the_loop() -> None:
    policy, nice, _ = await engine_thread("nice")
    assert policy == os.SCHED_OTHER
    assert nice == os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + ENGINE_NICE or nice == 19


async def test_idle_engine_threads_yield_to_the_loop_at_once() -> None:
    policy, _, _ = await engine_thread("idle")
    assert policy == os.SCHED_IDLE
    # The loop's own thread is untouched.
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER


async def test_engine_threads_are_named_for_the_os() -> None:
    # `top -H` and bench/threads.py tell the instances from the event loop and gRPC's poller by it.
    _, _, name = await engine_thread("nice")
    assert name == "engine-0"


class PolicyRecordingEngine(SyntheticEngine):
    """A synthetic engine that notes the scheduling policy of the thread each batch runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.policies: list[int] = []

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        self.policies.append(os.sched_getscheduler(threading.get_native_id()))
        return super().run(inputs, instance)


@pytest.mark.parametrize(("priority", "policy"), [("idle", os.SCHED_IDLE), ("nice", os.SCHED_OTHER)])
async def test_the_batcher_runs_its_engine_at_the_priority_it_is_given(priority: EnginePriority, policy: int) -> None:
    engine = PolicyRecordingEngine()
    batcher = Batcher(engine, BatchLimits(max_rows=8, max_tokens=384, max_delay=0.0),  # type: ignore[arg-type]
                      cost_model=exact_cost_model(), engine_priority=priority)
    await batcher.start()
    try:
        item = batcher.submit([make_row(5, 1)], time.monotonic() + 5)
        await asyncio.wait_for(item.future, 5)
    finally:
        await batcher.stop(1.0)
    assert engine.policies and set(engine.policies) == {policy}


async def test_each_thread_prepares_its_instance_one_at_a_time_before_any_batch() -> None:
    events: list[tuple[str, int, int]] = []  # (what, instance, thread)
    busy = threading.Lock()

    def prepare(instance: int) -> None:
        assert busy.acquire(blocking=False), "two threads prepared at once"
        time.sleep(0.05)
        events.append(("prepare", instance, threading.get_ident()))
        busy.release()

    def run(inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        events.append(("run", instance, threading.get_ident()))
        return {}

    loop = asyncio.get_running_loop()
    finished: list[Job] = []
    all_done = asyncio.Event()

    def done(job: Job) -> None:  # called on the loop
        finished.append(job)
        if len(finished) == 6:
            all_done.set()

    workers = EngineWorkers(run, 3, loop, time.monotonic, done, done, "nice", prepare)
    try:
        await asyncio.to_thread(workers.wait_prepared, 10)
        prepared = {instance: thread for what, instance, thread in events if what == "prepare"}
        assert sorted(prepared) == [0, 1, 2] and len(set(prepared.values())) == 3
        for batch_id in range(6):
            workers.submit(Job(batch_id=batch_id, batch=[], inputs=synthetic_inputs(1, 8)))
        await asyncio.wait_for(all_done.wait(), 10)
    finally:
        workers.close()
    # Every batch ran on the thread that prepared its instance.
    assert all(thread == prepared[instance] for what, instance, thread in events if what == "run")


async def test_a_failed_preparation_stops_the_batcher_from_starting() -> None:
    class UnpreparableEngine(SyntheticEngine):
        def prepare_thread(self, instance: int) -> None:
            raise RuntimeError("capture failed")

    batcher = Batcher(UnpreparableEngine(), BatchLimits(max_rows=8, max_tokens=384, max_delay=0.0),  # type: ignore[arg-type]
                      cost_model=exact_cost_model())
    with pytest.raises(RuntimeError, match="preparing an engine thread failed: capture failed"):
        await batcher.start()
    assert not batcher._accepting  # it refuses work: nothing would run it
