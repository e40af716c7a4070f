"""A real InferenceServer on its own event loop in a thread, for synchronous tests (hypothesis, raw bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import running_server


@contextlib.contextmanager
def server_in_thread(models: list[Path], **overrides: object) -> Iterator[Any]:
    """Start `running_server` in a background thread; yield the InferenceServer; drain it on exit."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        try:
            async with running_server(models, **overrides) as server:
                holder["server"] = server
                started.set()
                await stop.wait()
        except BaseException as error:  # surfaced to the test below
            holder["error"] = error
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.wait(120)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["server"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
