"""bench/gpu.py's harness, run on CPU with a tiny model (the GPU variants report why they were skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from bench import gpu
from millibatch.engines import cuda_runtime
from millibatch.engines.model_dir import Manifest


def test_harness_writes_json_and_markdown(tiny_embed_dir: Path, tmp_path: Path) -> None:
    gpu.main(["--model", str(tiny_embed_dir), "--variants", "cpu,ort-cuda-fp32,tensorrt", "--quick",
              "--rows", "1,4", "--tokens", "16", "--out", str(tmp_path)])
    (report_path,) = tmp_path.glob("gpu-*.json")
    report = json.loads(report_path.read_text())
    engine = {e["variant"]: e for e in report["engine"]}
    assert [(s["rows"], s["padded_length"]) for s in engine["cpu"]["shapes"]] == [(1, 16), (4, 16)]
    assert all(s["p50_ms"] > 0 and s["rows_per_s"] > 0 for s in engine["cpu"]["shapes"])
    (grpc_cpu,) = [g for g in report["grpc"] if g["variant"] == "cpu"]
    assert [lat["tokens"] for lat in grpc_cpu["latency"]] == [16, 64]  # 128 clipped to the tiny max_length
    assert grpc_cpu["saturation"]["requests_per_s"] > 0
    if cuda_runtime.device_count() == 0:
        assert "skipped" in engine["ort-cuda-fp32"] and "skipped" in engine["tensorrt"]
    assert (tmp_path / report_path.name.replace(".json", ".md")).read_text().startswith("# GPU benchmark")


def test_fp16_variant_keeps_float32_io(tiny_embed_dir: Path, tmp_path: Path) -> None:
    out = gpu.make_fp16_dir(tiny_embed_dir, tmp_path / "fp16")
    manifest = Manifest.load(out)
    assert manifest.precision == "fp16" and manifest.name.endswith("-fp16")
    model = onnx.load(str(out / manifest.onnx_file))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert set(outputs.values()) == {onnx.TensorProto.FLOAT}


def test_text_with_tokens_hits_the_requested_length(tiny_embed_dir: Path) -> None:
    from tokenizers import Tokenizer

    path = tiny_embed_dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    for n in (16, 128):
        assert len(tokenizer.encode(gpu.text_with_tokens(path, n)).ids) == n
