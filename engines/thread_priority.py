"""Engine threads below the event loop.

On a shared core the loop must run the moment a call arrives: it refuses, admits and answers. So the
instance threads that compute batches run at a lower priority than the loop, and under `nice` the
loop's thread asks for a short time slice so the kernel lets it preempt them when it wakes. Under
`idle`, the intra-op threads ONNX Runtime starts for an instance go below the loop too (a normal-priority
helper spinning beside a SCHED_IDLE caller starves it). A thread cannot raise its priority back without
privileges (CAP_SYS_NICE), so those are started from a short-lived thread that lowered itself first:
new threads inherit their creator's policy and nice value. Measured in docs/OVERLOAD.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

from millibatch.engines.thread_names import POOL_NAME, name_os_thread, os_thread_named

#: `nice`: Linux nice +5, with a short time slice for the loop (`shorten_time_slice`). `idle`:
#: SCHED_IDLE, which anything of normal priority preempts at once.
EnginePriority = Literal["nice", "idle"]
ENGINE_NICE = 5

T = TypeVar("T")


def lower_thread_priority(priority: EnginePriority) -> None:
    """Put the calling thread below the event loop (Linux, per thread); a no-op where unsupported."""
    with contextlib.suppress(AttributeError, OSError):
        if priority == "idle":
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENGINE_NICE)


def made_below_loop(priority: EnginePriority | None, make: Callable[[], T]) -> T:
    """`make()`, called on a thread at `priority` so that any thread it starts inherits that priority
    (None: called here, as it is); threads it starts are named POOL_NAME for the OS either way."""
    if priority is None:
        with os_thread_named(POOL_NAME):
            return make()
    made: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(priority)
        name_os_thread(POOL_NAME)
        try:
            made.append(make())
        except BaseException as error:  # re-raised on the caller's thread
            failed.append(error)

    thread = threading.Thread(target=run, name="engine-setup")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


#: The event loop's time slice under `nice`: short, so that when it wakes the kernel's EEVDF scheduler
#: (Linux 6.12 and later) lets it preempt an engine thread at once instead of after the engine's slice.
LOOP_SLICE_SECONDS = 0.0001
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64), ("util_min", ctypes.c_uint32),
                ("util_max", ctypes.c_uint32)]


def shorten_time_slice(seconds: float = LOOP_SLICE_SECONDS) -> bool:
    """Ask for a short time slice for the calling thread (sched_setattr's runtime for a normal thread;
    no privileges needed). False where the kernel or platform has no such thing."""
    number = _SCHED_SETATTR.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), policy=os.SCHED_OTHER,
                      nice=os.getpriority(os.PRIO_PROCESS, tid), runtime=round(seconds * 1e9))
    return bool(ctypes.CDLL(None, use_errno=True).syscall(number, tid, ctypes.byref(attr), 0) == 0)
