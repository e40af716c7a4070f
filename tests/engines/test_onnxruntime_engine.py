"""The CPU engine's sessions: which of ONNX Runtime's load-time graph rewrites they leave out."""

from __future__ import annotations

from pathlib import Path

import pytest

from millibatch.engines.convert.convert import ConvertOptions, convert
from millibatch.engines.onnxruntime_engine import cpu_session
from tests.helpers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-int8")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "embed")
    convert(ConvertOptions(source=str(checkpoint), output=root / "int8", precision="int8"), progress=lambda _: None)
    return root / "int8" / "model.onnx"


def optimized_ops(model: Path, out: Path, **kwargs: object) -> set[str]:
    import onnx

    cpu_session(model, 1, optimized_copy=out, **kwargs)  # type: ignore[arg-type]
    return {node.op_type for node in onnx.load(str(out)).graph.node}


def test_int8_sessions_keep_add_and_layernorm_unfused(tiny_int8_model: Path, tmp_path: Path) -> None:
    # Control: left to itself ONNX Runtime fuses the residual Add + LayerNormalization of an int8
    # graph into SkipLayerNormalization, the slow CPU kernel; the engine's sessions must not.
    assert "SkipLayerNormalization" in optimized_ops(tiny_int8_model, tmp_path / "all.onnx", disabled_optimizers=())
    ops = optimized_ops(tiny_int8_model, tmp_path / "engine.onnx")
    assert "SkipLayerNormalization" not in ops
    assert {"LayerNormalization", "Add", "DynamicQuantizeMatMul"} <= ops, ops
