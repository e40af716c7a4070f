"""infinity-emb as a peer of bench.goodput: how it is launched, and, where its environment was built
(`make build/bench-infinity-venv/.stamp`), that it serves the same model as millibatch and answers the load
generator."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.peers.catalog import INFINITY, INFINITY_MODEL, PeerContext, launch
from bench.processes import Launch, run_loadgen, start_server, wait_ready
from bench.run import infinity_env
from millibatch.engines.model_dir import Manifest

pytest.importorskip("aiohttp", reason="the bench extra (aiohttp) is not installed")


def test_infinity_serves_the_checkpoint_the_model_was_converted_from(tiny_embed_dir: Path) -> None:
    ctx = PeerContext(tiny_embed_dir, 1, None, None, "/envs/infinity/bin/infinity_emb")
    spec = launch(INFINITY, tiny_embed_dir, ctx, ["--batch-size", "16"])
    assert spec.command[:4] == ["/envs/infinity/bin/infinity_emb", "v2", "--model-id",
                                Manifest.load(tiny_embed_dir).source]
    # Its result cache would answer repeated texts without computing them.
    assert "--no-vector-disk-cache" in spec.command and spec.command[-2:] == ["--batch-size", "16"]
    assert (spec.protocol, spec.loadgen_flags) == ("openai", ["--model", INFINITY_MODEL])
    assert spec.env["HF_HUB_OFFLINE"] == "1"


def test_without_its_environment_the_launch_says_how_to_build_it(tiny_embed_dir: Path) -> None:
    with pytest.raises(RuntimeError, match=r"make build/bench-infinity-venv/\.stamp"):
        launch(INFINITY, tiny_embed_dir, PeerContext(tiny_embed_dir, 1, None, None), [])


def embeddings(spec: Launch, texts: list[str], model: str) -> np.ndarray:
    request = urllib.request.Request(f"http://{spec.target}/v1/embeddings",
                                     data=json.dumps({"model": model, "input": texts}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float64)


@pytest.mark.timeout(300)
def test_infinity_gives_millibatchs_vectors_and_answers_the_load_generator(minilm_dir: Path, stsb_path: Path,
                                                                           tmp_path: Path) -> None:
    command = infinity_env(None)
    if command is None:
        pytest.skip("no infinity-emb environment (make build/bench-infinity-venv/.stamp)")
    ctx = PeerContext(minilm_dir, 1, None, None, command)
    texts = [line.split("\t")[-1] for line in stsb_path.read_text().splitlines()[1:65]]
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    peers = [launch(INFINITY, minilm_dir, ctx, []), launch("millibatch-http", minilm_dir, ctx, [])]
    servers = [start_server(spec, None, tmp_path) for spec in peers]
    try:
        for server in servers:
            wait_ready(server, None, texts_file, 180)
        infinity, millibatch = peers
        ours = embeddings(millibatch, texts[:8], Manifest.load(minilm_dir).name)
        theirs = embeddings(infinity, texts[:8], INFINITY_MODEL)
        load = run_loadgen(infinity, None, texts_file, ["--mode", "closed", "--concurrency", "4", "--duration", "1",
                                                        "--warmup", "0", "--timeout", "5"], tmp_path / "load.json", 60)
    finally:
        for server in servers:
            server.stop()
    cosine = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosine.min() > 0.9999, cosine
    assert load is not None
    assert load["ok"] > 4 and load["errors"] == 0, load["error_kinds"]
