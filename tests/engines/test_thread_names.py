"""Threads named for the OS: what `top -H` and /proc/PID/task/*/comm show."""

from __future__ import annotations

import sys
import threading

import pytest

from millibatch.engines.thread_names import OS_NAME_BYTES, name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")


def os_name(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/comm", encoding="ascii") as comm:
        return comm.read().strip()


def test_a_thread_names_itself_and_long_names_are_cut() -> None:
    seen: list[str] = []

    def run() -> None:
        assert name_os_thread("a-rather-long-thread-name")
        seen.append(os_name(threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == ["a-rather-long-thread-name"[:OS_NAME_BYTES]]


def test_another_thread_of_the_process_is_named_by_its_id() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert thread.native_id is not None
        assert name_os_thread("grpc-poller", thread.native_id)
        assert os_name(thread.native_id) == "grpc-poller"
    finally:
        stop.set()
        thread.join()
    # A thread that has exited has no name left to set.
    assert not name_os_thread("gone", thread.native_id)
