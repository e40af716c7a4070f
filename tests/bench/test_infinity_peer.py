"""infinity-emb as a peer of bench.goodput: how it is launched with each engine, and, where its environment
was built (`make build/bench-infinity-venv/.stamp`), that it serves the same model as millibatch and answers
the load generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench.peers import catalog
from bench.peers.catalog import INFINITY, INFINITY_MODEL, INFINITY_ONNX, PeerContext, launch
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
    assert spec.command[spec.command.index("--engine") + 1] == "torch"
    assert (spec.protocol, spec.loadgen_flags) == ("openai", ["--model", INFINITY_MODEL])
    assert spec.env["HF_HUB_OFFLINE"] == "1"


def test_infinity_onnx_loads_an_fp32_hidden_state_export_of_the_same_checkpoint(
        tiny_embed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "INFINITY_ONNX_DIR", tmp_path / "exports")
    ctx = PeerContext(tiny_embed_dir, 1, None, None, "/envs/infinity/bin/infinity_emb")
    spec = launch(INFINITY_ONNX, tiny_embed_dir, ctx, [])
    at = spec.command.index
    assert spec.command[at("--engine") + 1] == "optimum" and spec.command[at("--model-id") + 1] == "."
    # That engine pools by the CLS token unless told the model's pooling.
    assert spec.command[at("--pooling-method") + 1] == Manifest.load(tiny_embed_dir).pooling == "mean"
    checkpoint = spec.cwd
    assert checkpoint.parent == tmp_path / "exports"
    # The checkpoint's own files (config, tokenizer) beside the export; its weights are in the graph.
    source = Path(Manifest.load(tiny_embed_dir).source)
    assert (checkpoint / "tokenizer.json").resolve() == (source / "tokenizer.json").resolve()
    assert sorted(p.name for p in checkpoint.rglob("*.onnx")) == ["model.onnx"]
    assert not Path(spec.env["HF_HOME"]).is_relative_to(checkpoint)
    # Mean-pooled and normalized as infinity does, the export's output is millibatch's embedding.
    ids = np.array([[2, 7, 9, 4, 3, 0], [2, 5, 3, 0, 0, 0]], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    (hidden,) = ort.InferenceSession(str(checkpoint / "model.onnx")).run(None, inputs)
    mask = inputs["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    ours = ort.InferenceSession(str(tiny_embed_dir / "model.onnx")).run(["embeddings"], inputs)[0]
    np.testing.assert_allclose(pooled, ours, atol=1e-5)
    # ONNX Runtime's default would pin a thread to every core of the machine, out of the server's cores: its
    # sessions get one thread per core the server may use, as every peer does.
    probe = ("import onnxruntime, sys; s = onnxruntime.InferenceSession(sys.argv[1]); "
             "print(s.get_session_options().intra_op_num_threads)")
    threads = subprocess.run([sys.executable, "-c", probe, str(checkpoint / "model.onnx")], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": spec.env["PYTHONPATH"]},
                             preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert threads.stdout.strip() == "1"
    # Made once: a second launch reuses it.
    made = (checkpoint / "model.onnx").stat().st_mtime_ns
    assert launch(INFINITY_ONNX, tiny_embed_dir, ctx, []).cwd == checkpoint
    assert (checkpoint / "model.onnx").stat().st_mtime_ns == made


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
@pytest.mark.parametrize("peer", [INFINITY, INFINITY_ONNX])
def test_infinity_gives_millibatchs_vectors_and_answers_the_load_generator(peer: str, minilm_dir: Path,
                                                                           stsb_path: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    command = infinity_env(None, onnx=peer == INFINITY_ONNX)
    if command is None:
        pytest.skip("no infinity-emb environment with this engine (make build/bench-infinity-venv/.stamp)")
    monkeypatch.setattr(catalog, "INFINITY_ONNX_DIR", tmp_path / "exports")
    ctx = PeerContext(minilm_dir, 1, None, None, command)
    texts = [line.split("\t")[-1] for line in stsb_path.read_text().splitlines()[1:65]]
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    peers = [launch(peer, minilm_dir, ctx, []), launch("millibatch-http", minilm_dir, ctx, [])]
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
