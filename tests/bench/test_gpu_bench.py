"""bench/gpu.py's harness, run on CPU with a tiny model (the GPU variants report why they were skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import gpu
from millibatch.engines import cuda_runtime


def test_harness_writes_json_and_markdown(tiny_embed_dir: Path, stsb_path: Path, tmp_path: Path) -> None:
    checkpoint = tiny_embed_dir.parent / "checkpoint"  # where conftest's converted_tiny made it
    gpu.main(["--model", str(tiny_embed_dir), "--checkpoint", str(checkpoint), "--stsb", str(stsb_path),
              "--variants", "cpu,ort-plain,ort-iobind,torch-cpu,ort-cuda-fp32,tensorrt", "--served", "cpu", "--quick",
              "--serve-also", "cpu-w2=cpu:--workers 2", "--scale-out", "cpu:2", "--rows", "1,4", "--tokens", "16",
              "--out", str(tmp_path)])
    (report_path,) = tmp_path.glob("gpu-*.json")
    report = json.loads(report_path.read_text())
    engine = {e["variant"]: e for e in report["engine"]}
    for name in ("cpu", "ort-plain", "ort-iobind", "torch-cpu"):
        assert [(s["rows"], s["tokens"]) for s in engine[name]["shapes"]] == [(1, 16), (4, 16)]
        assert all(s["p50_ms"] > 0 and s["rows_per_s"] > 0 for s in engine[name]["shapes"])
        # Every runner gives the exported graph's answer: PyTorch's pooling matches the graph's too.
        assert engine[name]["min_cosine_vs_cpu_fp32"] > 0.9999, name
    assert engine["cpu"]["shapes"][0]["padded_length"] == 16
    assert engine["cpu"]["graph"]["fused_attention"] == 2 and "graph" not in engine["torch-cpu"]
    grpc_cpu, grpc_two = report["grpc"]
    assert (grpc_cpu["variant"], grpc_two["variant"]) == ("cpu", "cpu-w2")
    # Two server processes on one port, the load over eight connections.
    assert grpc_two["saturation"]["ok"] > 0 and grpc_two["saturation"]["errors"] == 0
    (scaled,) = report["scale_out"]
    assert scaled["processes"] == 2 and scaled["requests_per_s"] > 0 and scaled["errors"] == 0
    assert [lat["tokens"] for lat in grpc_cpu["latency"]] == [16, 64]  # 128 clipped to the tiny max_length
    saturation = grpc_cpu["saturation"]
    assert saturation["requests_per_s"] > 0 and saturation["batches"] > 0 and saturation["mean_rows"] >= 1
    assert sum(saturation["rows_histogram"].values()) > 0
    assert saturation["engine_busy"] > 0 and saturation["server_cpu_cores"] > 0
    assert set(grpc_cpu["growth_rows"]) == {"16", "32", "64", "128"}
    assert set(grpc_cpu["cost_model"]) == {"overhead", "per_row", "per_token", "per_token_squared"}
    if cuda_runtime.device_count() == 0:
        assert "skipped" in engine["ort-cuda-fp32"] and "skipped" in engine["tensorrt"]
    markdown = (tmp_path / report_path.name.replace(".json", ".md")).read_text()
    assert markdown.startswith("# GPU benchmark") and "| torch-cpu | 4 × 16 |" in markdown
    assert "| cpu | 2 |" in markdown


def test_each_variant_runs_its_own_model_and_server_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_cuda_ready", lambda providers: None)
    models = gpu.Models(fp32=tmp_path / "fp32", fp16=tmp_path / "fp16", int8=None, checkpoint=None)
    found, skipped = gpu.variants(["ort-cuda-fp16-graphs", "ort-cuda-fp32", "ort-cuda-int8", "torch-cpu",
                                   "ort-plain", "ort-iobind"], models)
    by_name = {v.name: v for v in found}
    assert by_name["ort-cuda-fp16-graphs"].model_dir == tmp_path / "fp16"
    assert by_name["ort-cuda-fp16-graphs"].options["cuda_graphs"] is True
    assert by_name["ort-cuda-fp16-graphs"].serve_flags is not None
    assert "--cuda-graphs" in by_name["ort-cuda-fp16-graphs"].serve_flags
    assert by_name["ort-cuda-fp32"].model_dir == tmp_path / "fp32"
    assert "--no-cuda-graphs" in (by_name["ort-cuda-fp32"].serve_flags or [])
    assert by_name["ort-plain"].options == {"provider": "CUDAExecutionProvider"}
    assert (by_name["ort-plain"].kind, by_name["ort-iobind"].kind) == ("plain", "iobind")
    assert set(skipped) == {"ort-cuda-int8", "torch-cpu"}  # no int8 directory, no checkpoint
    with pytest.raises(SystemExit, match="unknown variant"):
        gpu.variants(["ort-cuda-bf16"], models)
    (again,), skipped_here = gpu.extra_served(["fp32-x2=ort-cuda-fp32:--instances 2", "x=ort-cuda-int8:"], found)
    assert again.name == "fp32-x2" and again.model_dir == tmp_path / "fp32"
    assert again.serve_flags == [*(by_name["ort-cuda-fp32"].serve_flags or []), "--instances", "2"]
    assert skipped_here == {"x": "ort-cuda-int8 is not served in this run"}
    with pytest.raises(SystemExit, match="serve-also"):
        gpu.extra_served(["x=ort-cuda-bf16:--instances 2"], found)


def test_sentences_are_padded_to_the_runner_length(tiny_embed_dir: Path) -> None:
    batch, longest = gpu.sentence_batch(tiny_embed_dir / "tokenizer.json", ["a b", "a much longer sentence here"], 64)
    assert batch.padded_length == longest and batch.attention_mask[0].sum() < longest
    padded = gpu.padded_to(batch, 32)
    assert padded.padded_length == 32 and np.array_equal(padded.attention_mask[:, :longest], batch.attention_mask)


def test_growth_rows_follow_the_cost_model() -> None:
    # 1 ms per call and 10 µs per row at every length: 90% efficiency needs 900 rows' worth of work.
    rows = gpu.chosen_rows({"overhead": 1e-3, "per_row": 1e-5, "per_token": 0.0, "per_token_squared": 0.0}, [16],
                           1000)
    assert rows == {16: 900}
    free = gpu.chosen_rows({"overhead": 1e-3, "per_row": 0.0, "per_token": 0.0, "per_token_squared": 0.0}, [16], 64)
    assert free == {16: 64}  # rows that cost nothing fill the batch


def test_text_with_tokens_hits_the_requested_length(tiny_embed_dir: Path) -> None:
    from tokenizers import Tokenizer

    path = tiny_embed_dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    for n in (16, 128):
        assert len(tokenizer.encode(gpu.text_with_tokens(path, n)).ids) == n
