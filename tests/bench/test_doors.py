"""millibatch through its other doors in the benchmarks: KServe V2 with NVIDIA's tritonclient and the
OpenAI-compatible HTTP door, each launched as bench.goodput launches it and loaded by the load generator
(a real server on the tiny model), answering and, past a tiny queue, refusing with the door's own status."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.loadgen import NODE_PROTOCOL, NODE_SCRIPT, node_sdk_installed
from bench.peers.catalog import DOOR_PEERS, DOORS, PeerContext, launch
from bench.processes import run_loadgen, start_server, wait_ready

pytest.importorskip("aiohttp", reason="the bench extra (aiohttp) is not installed")
# Only looked for: its protos clash with millibatch's own in one process (the load generator imports it).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient is not installed")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(DOOR_PEERS))
def test_each_door_answers_and_refuses_through_its_own_client(name: str, tiny_embed_dir: Path, stsb_path: Path,
                                                              tmp_path: Path) -> None:
    if DOOR_PEERS[name] == NODE_PROTOCOL and not node_sdk_installed():
        pytest.skip(f"the OpenAI Node SDK is not installed (npm ci --prefix {NODE_SCRIPT.parent})")
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([line.split("\t")[-1] for line in stsb_path.read_text().splitlines()[1:200]]))
    context = PeerContext(tiny_embed_dir, 1, None, None)
    # A queue of two rows that always waits 20 ms for company: a burst of 64 in flight is mostly refused.
    spec = launch(name, tiny_embed_dir, context, ["--batch-policy", "fifo", "--max-delay-ms", "20",
                                                   "--max-queue-rows", "2"])
    assert spec.protocol == DOOR_PEERS[name]
    server = start_server(spec, None, tmp_path)
    try:
        wait_ready(server, None, texts, 60)
        answered = run_loadgen(spec, None, texts, ["--mode", "closed", "--concurrency", "1", "--duration", "1",
                                                   "--warmup", "0", "--timeout", "5"], tmp_path / "one.json", 60)
        burst = run_loadgen(spec, None, texts, ["--mode", "closed", "--concurrency", "64", "--duration", "1",
                                                "--warmup", "0", "--timeout", "5"], tmp_path / "burst.json", 60)
    finally:
        server.stop()
    assert answered is not None and burst is not None
    assert answered["ok"] > 5 and answered["errors"] == 0, answered["error_kinds"]
    refused = DOORS[name.removeprefix("millibatch-")].refused
    assert burst["ok"] > 0 and set(burst["error_kinds"]) == {refused}, burst["error_kinds"]
