"""gRPC's completion-queue poller thread, optionally kept from preempting the event loop.

With gRPC's poller (`grpc_event_engine: false`), grpc.aio runs one thread that waits on gRPC core's
completion queue, does the socket work, and wakes the event loop through a socket pair for every
completion. On a shared core each wake-up of that thread preempts the loop, so the loop takes the
completions of about one call per wake-up: some 12 thread switches per refused call. Under SCHED_BATCH
(no privileges needed) its wake-ups do not preempt: it runs when the running thread waits or its slice
ends, and the loop then finds the completions of many calls at once. The price is that it also waits
out an engine thread's slice (up to a scheduler tick), so by default it applies only while the server
refuses calls, with a pacer bounding the wait (`overload`, service/poller_pacing.py; docs/CALL_COST.md).
The thread is found by its target's name, which grpc.aio sets; where there is none (the EventEngine),
nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Literal

#: `normal`: as gRPC starts it (SCHED_OTHER); `batch`: SCHED_BATCH, which waits for the running thread
#: instead of preempting it; `overload`: normal, and batched only while calls are refused
#: (service/poller_pacing.py).
PollerPolicy = Literal["normal", "batch", "overload"]
#: grpc.aio's PollerCompletionQueue starts its thread with this target; Python names the thread after it.
POLLER_TARGET = "_poll_wrapper"


def poller_threads() -> list[threading.Thread]:
    """grpc.aio's completion-queue poller threads of this process (none under the EventEngine)."""
    return [t for t in threading.enumerate() if t.name.endswith(f"({POLLER_TARGET})")]


def schedule_poller(policy: PollerPolicy) -> int:
    """Put gRPC's poller thread(s) under `policy`; returns how many took it (0 where unsupported)."""
    linux_policy = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    if linux_policy is None:
        return 0
    changed = 0
    for thread in poller_threads():
        if thread.native_id is None:
            continue
        with contextlib.suppress(OSError):
            os.sched_setscheduler(thread.native_id, linux_policy, os.sched_param(0))
            changed += 1
    return changed
