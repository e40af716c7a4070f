"""convert's optimised variants on tiny random BERTs: fused fp32, int8 (dynamic and QDQ), fp16,
token classification, and TensorRT failing clearly where it is not installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from millibatch.engines.buckets import BucketPlan
from millibatch.engines.convert.convert import ConversionError, ConvertOptions, convert
from millibatch.engines.convert.tensorrt_plan import runtime_profiles
from millibatch.engines.convert.validate import encode_padded
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from millibatch.engines.plans import PlanSpec
from tests.helpers import make_tiny_checkpoint, minilm_source

REPO = Path(__file__).resolve().parents[3]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-variants") / "checkpoint", "embed")


def quiet(_: str) -> None:
    pass


def op_types(onnx_file: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(onnx_file)).graph.node}


def embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    engine = OnnxRuntimeCpuEngine(model_dir / "model.onnx")
    return engine.run(encode_padded(tokenizer, texts, 64), 0)["embeddings"]


TEXTS = ["a man plays a guitar", "short", "a much longer sentence with several more word pieces in it, ok?"]


def test_fused_fp32_matches_unfused_and_keeps_dynamic_inputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    fused = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "fused"), progress=quiet)
    plain = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "plain", fuse=False),
                    progress=quiet)
    assert fused.optimizations["fusion"].get("Attention") == 2, fused.optimizations
    assert "fusion_warning" not in fused.optimizations
    assert "Attention" in op_types(tmp_path / "fused" / "model.onnx")
    assert "Attention" not in op_types(tmp_path / "plain" / "model.onnx")
    assert fused.validation["min_cosine"] >= 0.9999 and plain.optimizations == {}
    # Different batch sizes and lengths than the export example: the dynamic axes survived fusion.
    a, b = embed(tmp_path / "fused", TEXTS), embed(tmp_path / "plain", TEXTS)
    assert a.shape == (3, 32)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_left_unfused_is_warned_and_recorded(tiny_checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # An optimizer that fuses everything but attention, as onnxruntime 1.30.0's did to MiniLM's export.
    from millibatch.engines.convert import optimize

    real_fuse = optimize.fuse

    def fuse_without_attention(*args: Any, **kwargs: Any) -> dict[str, int]:
        return {op: n for op, n in real_fuse(*args, **kwargs).items() if op not in optimize.ATTENTION_OPS}

    monkeypatch.setattr(optimize, "fuse", fuse_without_attention)
    said: list[str] = []
    manifest = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "out"), progress=said.append)
    warning = manifest.optimizations["fusion_warning"]
    assert warning.startswith("attention fused in 0 of 2 layers by onnxruntime")
    assert f"WARNING: {warning}" in said


def test_int8_dynamic_is_quantized_validated_and_recorded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "int8", precision="int8"),
                       progress=quiet)
    ops = op_types(tmp_path / "int8" / "model.onnx")
    assert {"QAttention", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops, ops
    quantization = manifest.optimizations["quantization"]
    assert quantization["method"] == "dynamic" and quantization["per_channel"] is True
    # The default sensitive node (first FFN output) stays fp32, and is named in the manifest.
    assert quantization["fp32_nodes"] == ["/model/encoder/layer.0/output/dense/MatMul"]
    assert manifest.precision == "int8" and manifest.validation["mean_cosine"] >= 0.98
    assert Manifest.load(tmp_path / "int8").optimizations == manifest.optimizations


def test_int8_static_qdq_for_cuda_is_calibrated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "qdq", precision="int8",
                                      device="cuda", int8_fp32_nodes=()), progress=quiet)
    ops = op_types(tmp_path / "qdq" / "model.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest.optimizations["quantization"]["method"] == "static-qdq"
    assert manifest.optimizations["quantization"]["calibration_rows"] > 0
    assert manifest.validation["verified"] is True and manifest.validation["mean_cosine"] >= 0.98


def test_int8_static_qdq_smooths_and_keeps_ffn_outputs_by_default(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "qdq", precision="int8",
                                      device="cuda"), progress=quiet)
    quantization = manifest.optimizations["quantization"]
    assert quantization["fp32_nodes"] == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(2)]
    # Per layer: the attention input (query, key, value share it), the context, the FFN input.
    assert quantization["smoothed_activations"] == 6 and quantization["smoothed_matmuls"] == 10
    assert "Mul" in op_types(tmp_path / "qdq" / "model.onnx")
    assert [p.name for p in (tmp_path / "qdq").iterdir() if "smoothed" in p.name] == []


def test_fp16_keeps_io_fp32_and_sensitive_ops_fp32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import onnx

    manifest = convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "fp16", precision="fp16"),
                       progress=quiet)
    graph = onnx.load(str(tmp_path / "fp16" / "model.onnx")).graph
    assert {o.type.tensor_type.elem_type for o in graph.output} == {onnx.TensorProto.FLOAT}
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert "SkipLayerNormalization" in manifest.optimizations["fp16_keep_fp32_ops"]
    validation = manifest.validation
    # Either ORT CPU ran it and it agreed, or the manifest says plainly that it is unverified.
    assert validation["verified"] is False or validation["min_cosine"] >= 0.999, validation


def test_token_classify_exports_per_token_logits(tmp_path: Path) -> None:
    import shutil

    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    labels = ["O", "B-PER", "I-PER"]
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, id2label=dict(enumerate(labels)),
                        label2id={n: i for i, n in enumerate(labels)})
    checkpoint = tmp_path / "ner"
    BertForTokenClassification(config).save_pretrained(str(checkpoint))
    shutil.copyfile(minilm_source() / "tokenizer.json", checkpoint / "tokenizer.json")
    manifest = convert(ConvertOptions(source=str(checkpoint), output=tmp_path / "model", task="token-classify"),
                       progress=quiet)
    assert manifest.labels == labels and manifest.output_names == ["token_logits", "token_probabilities"]
    assert manifest.validation["label_agreement"] == 1.0
    from tokenizers import Tokenizer

    batch = encode_padded(Tokenizer.from_file(str(tmp_path / "model" / "tokenizer.json")), TEXTS, 64)
    out = OnnxRuntimeCpuEngine(tmp_path / "model" / "model.onnx").run(batch, 0)
    assert out["token_logits"].shape == (*batch.input_ids.shape, 3)
    np.testing.assert_allclose(out["token_probabilities"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_tensorrt_without_tensorrt_fails_clearly_and_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="tensorrt"):
        convert(ConvertOptions(source=str(tiny_checkpoint), output=tmp_path / "trt", engine="tensorrt"),
                progress=quiet)
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_tensorrt_with_exit_2(tiny_checkpoint: Path, tmp_path: Path) -> None:
    if HAS_TENSORRT:
        pytest.skip("tensorrt is installed here")
    result = subprocess.run(
        [sys.executable, "-m", "millibatch", "convert", str(tiny_checkpoint), "-o", str(tmp_path / "m"),
         "--engine", "tensorrt", "--precision", "fp16", "--seq-len", "1", "64", "128"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert result.returncode == 2 and "tensorrt" in result.stderr, result.stderr


def test_cli_int8_prints_manifest_summary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "millibatch", "convert", str(tiny_checkpoint), "-o", str(tmp_path / "m"),
         "--precision", "int8", "--int8-fp32-nodes"],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["precision"] == "int8" and summary["optimizations"]["quantization"]["fp32_nodes"] == []


def test_plan_profiles_match_what_the_runtime_engine_expects() -> None:
    buckets = BucketPlan.build(32, 256)
    profiles = runtime_profiles(buckets, instances=2, opt_rows=8)
    spec = PlanSpec(file="p.plan", precision="fp16", tensorrt_version="10.7.0", compute_capability=(9, 0),
                    instances=2, max_rows=32, lengths=tuple(buckets.lengths))
    assert len(profiles) == spec.profile_count
    for instance in range(2):
        for bucket in buckets.buckets:
            profile = profiles[spec.buckets.profile_index(instance, bucket)]
            assert profile.seq_len == (bucket.length,) * 3
            assert profile.batch == (1, 8, 32)
    with pytest.raises(ValueError):
        runtime_profiles(buckets, instances=0, opt_rows=8)
