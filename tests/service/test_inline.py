"""A lone call at an idle model runs its batch on the event loop's own thread (`inline_max_ms`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from millibatch.client import AsyncClient
from millibatch.engines.base import Engine, EngineInputs, FloatArray
from millibatch.service.model_loading import inline_seconds
from millibatch.settings import load_settings
from tests.helpers import running_server


class ThreadRecorder:
    """Delegates to a real engine and remembers the thread of each call."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.info = inner.info
        self.output_names = inner.output_names
        self.threads: list[threading.Thread] = []

    def padded_length(self, n: int) -> int:
        return self.inner.padded_length(n)

    def run(self, inputs: EngineInputs, instance: int) -> dict[str, FloatArray]:
        self.threads.append(threading.current_thread())
        return self.inner.run(inputs, instance)

    def close(self) -> None:
        self.inner.close()


async def test_a_lone_call_runs_on_the_loop_and_gives_the_same_answer(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir]) as server:
        batcher = server.registry.models["tiny-embed"].batcher
        assert batcher.inline_seconds == 0.005  # the default, on CPU
        recorder = batcher.engine = ThreadRecorder(batcher.engine)
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            here = np.array(await client.embed(["A man is playing a guitar."]))
            batcher.inline_seconds = 0.0
            threaded = np.array(await client.embed(["A man is playing a guitar."]))
    loop_thread = threading.current_thread()  # the server runs on this test's loop
    assert [thread is loop_thread for thread in recorder.threads] == [True, False]
    np.testing.assert_allclose(here, threaded, atol=1e-6)
    assert server.ledger.answered == server.ledger.accepted == 2


async def test_off_with_zero(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir], inline_max_ms=0) as server:
        batcher = server.registry.models["tiny-embed"].batcher
        recorder = batcher.engine = ThreadRecorder(batcher.engine)
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            await client.embed(["hello"])
    assert batcher.inline_seconds == 0.0 and threading.current_thread() not in recorder.threads


def test_never_on_a_gpu() -> None:
    settings: Any = load_settings({"inline_max_ms": 3})
    assert inline_seconds(settings, "cpu") == 0.003
    assert inline_seconds(settings, "cuda") == 0.0
