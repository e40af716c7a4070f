"""The CPU engine's sessions: which of ONNX Runtime's load-time graph rewrites they leave out, and when
their threads spin."""

from __future__ import annotations

from pathlib import Path

import pytest

from millibatch.engines.base import SpinningChoice
from millibatch.engines.convert.convert import ConvertOptions, convert
from millibatch.engines.onnxruntime_engine import cpu_session, session_options, spins
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


@pytest.mark.parametrize(("choice", "instances", "threads", "expected"), [
    ("auto", 1, 1, False),  # one thread: nothing to spin
    ("auto", 1, 2, True),
    ("auto", 10_000, 2, False),  # more threads than cores: a spinning thread would take another's core
    ("on", 64, 2, True),
    ("off", 1, 2, False),
    ("always", 1, 1, True),
])
def test_which_choices_spin(choice: SpinningChoice, instances: int, threads: int, expected: bool) -> None:
    assert spins(choice, instances, threads) is expected


@pytest.mark.parametrize(("spinning", "keep", "allow", "stop"), [
    (False, False, "0", None),
    (True, False, "1", "1"),  # spin while a batch runs, stop when it returns
    (True, True, "1", None),  # ONNX Runtime's own default: spin on after it too
])
def test_spinning_stops_after_each_batch_unless_kept(spinning: bool, keep: bool, allow: str, stop: str | None) -> None:
    options = session_options(2, spinning=spinning, keep_spinning=keep)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
    entries = options.get_session_config_entry
    try:
        stopped: str | None = entries("session.force_spinning_stop")
    except RuntimeError:  # ONNX Runtime raises for an entry never set
        stopped = None
    assert stopped == stop
