"""The server's own threads, named for the OS (`top -H`, `ps -L`, /proc/PID/task/*/comm).

Python 3.11 keeps a thread's name to itself: the kernel shows every thread as the interpreter, so an
operator (or bench/threads.py) cannot tell an engine instance from gRPC's poller when one of them takes
the core. The event loop is the process's main thread (its thread id is the process id).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

#: Linux keeps 15 bytes of a thread's name.
OS_NAME_BYTES = 15
#: Threads whose Python name says nothing to an operator, named for the OS instead: those ONNX Runtime
#: starts for an instance, and gRPC's completion-queue poller. The server's own threads (`engine-N`,
#: `poller-pacer`) go by their Python names.
POOL_NAME = "engine-pool"
GRPC_POLLER_NAME = "grpc-poller"


def name_os_thread(name: str | None = None, native_id: int | None = None) -> bool:
    """Name the thread `native_id` of this process (default: the calling thread) `name` for the OS (default:
    the calling thread's Python name), cut to OS_NAME_BYTES; False where the OS has no such name (not
    Linux) or the thread is gone."""
    tid = threading.get_native_id() if native_id is None else native_id
    name = threading.current_thread().name if name is None else name
    try:
        with open(f"/proc/self/task/{tid}/comm", "w", encoding="ascii", errors="replace") as comm:
            comm.write(name[:OS_NAME_BYTES])
    except OSError:
        return False
    return True


def os_thread_name(native_id: int | None = None) -> str | None:
    """The OS's name of the thread `native_id` of this process (default: the calling thread); None where
    unknown."""
    tid = threading.get_native_id() if native_id is None else native_id
    try:
        with open(f"/proc/self/task/{tid}/comm", encoding="ascii", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return None


@contextlib.contextmanager
def os_thread_named(name: str) -> Iterator[None]:
    """The calling thread named `name` for the OS while the block runs: threads it starts meanwhile keep
    that name (Linux copies it to a new thread), as ONNX Runtime's intra-op threads do."""
    before = os_thread_name()
    name_os_thread(name)
    try:
        yield
    finally:
        if before is not None:
            name_os_thread(before)
