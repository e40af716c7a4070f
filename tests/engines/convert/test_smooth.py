"""SmoothQuant on a tiny exported BERT: the smoothed graph computes the same function, with one
divide per activation however many MatMuls read it, and scales measured on real tokens only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from millibatch.engines.base import EngineInputs
from millibatch.engines.convert import export, quantize, smooth
from millibatch.engines.convert.validate import encode_padded
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from tests.helpers import make_tiny_checkpoint

TEXTS = ["a man plays a guitar", "short", "a much longer sentence with several more word pieces in it, ok?"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EngineInputs]:
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("smooth")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "embed")
    head = export.build_head(export.load_reference(checkpoint, "embed"), "embed")
    export.export_onnx(head, "embed", root / "model.onnx")
    batch = encode_padded(Tokenizer.from_file(str(checkpoint / "tokenizer.json")), TEXTS, 64)
    return root / "model.onnx", batch


def test_smoothing_keeps_the_function_and_shares_one_divide_per_activation(
    exported: tuple[Path, EngineInputs], tmp_path: Path
) -> None:
    import onnx

    model_file, batch = exported
    nodes = quantize.weight_nodes(model_file)
    out = tmp_path / "smoothed.onnx"
    done = smooth.smooth_matmuls(model_file, out, nodes, [batch], export.INPUT_NAMES)
    # 2 layers x (query/key/value input, attention context, FFN input, FFN output) = 8 activations.
    assert done == {"smoothquant_alpha": 0.5, "smoothed_activations": 8, "smoothed_matmuls": 12}
    muls = [n for n in onnx.load(str(out)).graph.node if n.name.startswith("SmoothQuant_")]
    assert len(muls) == 8
    before = OnnxRuntimeCpuEngine(model_file).run(batch, 0)["embeddings"]
    after = OnnxRuntimeCpuEngine(out).run(batch, 0)["embeddings"]
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_activation_ranges_ignore_padding(exported: tuple[Path, EngineInputs]) -> None:
    import onnx

    model_file, batch = exported
    model = onnx.load(str(model_file))
    first = next(n for n in model.graph.node if n.op_type == "MatMul" and "query" in n.name).input[0]
    padded = smooth.activation_absmax(model, [first], [batch], export.INPUT_NAMES)[first]
    # The same rows one at a time, with no padding at all, must give the same per-channel peaks.
    alone = [
        EngineInputs(input_ids=batch.input_ids[i : i + 1, :n], attention_mask=batch.attention_mask[i : i + 1, :n],
                     token_type_ids=batch.token_type_ids[i : i + 1, :n])
        for i, n in enumerate(batch.attention_mask.sum(axis=1))
    ]
    unpadded = smooth.activation_absmax(model, [first], alone, export.INPUT_NAMES)[first]
    np.testing.assert_allclose(padded, unpadded, rtol=1e-4, atol=1e-6)
