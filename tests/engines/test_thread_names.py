"""Threads named for the OS: what `top -H` and /proc/PID/task/*/comm show."""

from __future__ import annotations

import sys
import threading

import pytest

from millibatch.engines.thread_names import OS_NAME_BYTES, name_os_thread, os_thread_name, os_thread_named
from millibatch.engines.thread_priority import POOL_NAME, made_below_loop

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")


def test_a_thread_names_itself_and_long_names_are_cut() -> None:
    seen: list[str] = []

    def run() -> None:
        assert name_os_thread("a-rather-long-thread-name")
        seen.append(os_thread_name())

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
        assert os_thread_name(thread.native_id) == "grpc-poller"
    finally:
        stop.set()
        thread.join()
    # A thread that has exited has no name left to set.
    assert not name_os_thread("gone", thread.native_id)


@pytest.mark.parametrize("priority", [None, "nice", "idle"])
def test_threads_started_while_making_an_engine_are_named_as_its_pool(priority: str | None) -> None:
    # ONNX Runtime starts its intra-op threads inside the session's constructor; Linux copies the
    # creating thread's name to them. The caller's own name comes back afterwards.
    before = os_thread_name()
    names: list[str | None] = []

    def make() -> None:
        started = threading.Thread(target=lambda: names.append(os_thread_name()))
        started.start()
        started.join()

    made_below_loop(priority, make)  # type: ignore[arg-type]
    assert names == [POOL_NAME]
    assert os_thread_name() == before


def test_a_thread_named_for_a_block_gets_its_name_back() -> None:
    before = os_thread_name()
    with os_thread_named("engine-pool"):
        assert os_thread_name() == "engine-pool"
    assert os_thread_name() == before
