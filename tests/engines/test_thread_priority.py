"""Engine threads below the event loop: ONNX Runtime's own intra-op threads, and the loop's short time slice."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from pathlib import Path

import pytest

from millibatch.engines.base import synthetic_inputs
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from millibatch.engines.thread_priority import _SchedAttr, made_below_loop, shorten_time_slice

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


def threads_of_this_process() -> dict[int, tuple[int, int]]:
    """Thread id → (scheduling policy, nice) for every thread of this process."""
    found = {}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:
            found[tid] = (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid))
        except OSError:  # the thread ended meanwhile
            continue
    return found


@pytest.mark.parametrize("priority", ["idle", "nice"])
def test_onnx_runtime_intra_op_threads_start_idle_with_idle_engines(tiny_embed_dir: Path, priority: str) -> None:
    manifest = Manifest.load(tiny_embed_dir)
    before = threads_of_this_process()
    engine = OnnxRuntimeCpuEngine(tiny_embed_dir / manifest.onnx_file, instances=1, threads_per_instance=3,
                                  priority=priority)  # type: ignore[arg-type]
    try:
        engine.run(synthetic_inputs(2, 8), 0)
        started = {tid: state for tid, state in threads_of_this_process().items() if tid not in before}
    finally:
        engine.close()
    # Three intra-op threads: the caller's and two of ONNX Runtime's own, started with the session.
    assert len(started) >= 2
    # Under SCHED_IDLE they share it; niced, the instance thread alone is (they keep the loader's).
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    expected = (os.SCHED_IDLE, None) if priority == "idle" else (os.SCHED_OTHER, here)
    for policy, nice in started.values():
        assert policy == expected[0]
        assert expected[1] is None or nice == expected[1]
    # The calling thread is untouched.
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER


def test_made_below_loop_returns_and_raises_what_it_makes() -> None:
    assert made_below_loop("idle", lambda: 42) == 42
    assert made_below_loop(None, lambda: threading.get_native_id()) == threading.get_native_id()
    with pytest.raises(ValueError, match="no session"):
        made_below_loop("nice", lambda: (_ for _ in ()).throw(ValueError("no session")))


def time_slice_of_this_thread() -> int | None:
    """The calling thread's sched_attr runtime (its requested time slice under EEVDF) in ns; None where
    sched_getattr is missing."""
    attr = _SchedAttr()
    number = {"x86_64": 315, "aarch64": 275}.get(platform.machine())
    if number is None or ctypes.CDLL(None, use_errno=True).syscall(
            number, threading.get_native_id(), ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return int(attr.runtime)


def test_the_loop_thread_can_ask_for_a_short_time_slice() -> None:
    seen: list[tuple[bool, int | None]] = []

    def ask() -> None:
        granted = shorten_time_slice(0.0002)
        seen.append((granted, time_slice_of_this_thread()))

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    granted, runtime = seen[0]
    if not granted or runtime != 200_000:
        pytest.skip("this kernel has no per-thread time slices for normal threads (Linux 6.12 and later)")
    # Only the thread that asked: this one keeps the kernel's default.
    assert time_slice_of_this_thread() != 200_000
