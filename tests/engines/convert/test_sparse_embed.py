"""convert --task sparse-embed: a masked-LM checkpoint becomes a graph whose `sparse_weights` are SPLADE's
max over tokens of log(1 + ReLU(logits)), equal to PyTorch's, with padding kept out of the max."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from millibatch import cli
from millibatch.engines.convert.convert import ConversionError, ConvertOptions, convert
from millibatch.engines.convert.validate import encode_padded
from millibatch.engines.model_dir import Manifest
from millibatch.engines.onnxruntime_engine import OnnxRuntimeCpuEngine
from millibatch.engines.sparse import sparsify
from tests.helpers import make_tiny_checkpoint, make_tiny_mlm_checkpoint, pytorch_splade

TEXTS = ["ok", "A man is playing a guitar.", "Stocks fell sharply on Tuesday after the central bank raised rates."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_mlm_checkpoint(tmp_path_factory.mktemp("tiny-mlm") / "checkpoint")


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The checkpoint converted through the CLI; the model directory and the JSON it printed."""
    out = tmp_path_factory.mktemp("tiny-sparse") / "model"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["convert", str(checkpoint), "-o", str(out), "--task", "sparse-embed", "--name", "splade"])
    assert code == 0, stderr.getvalue()
    return out, json.loads(stdout.getvalue())


def test_the_cli_writes_a_sparse_embed_manifest(converted: tuple[Path, dict[str, object]]) -> None:
    out, printed = converted
    manifest = Manifest.load(out)
    assert (manifest.task, manifest.name, manifest.dimensions) == ("sparse-embed", "splade", 30522)
    assert manifest.output_names == ["sparse_weights"]
    assert (manifest.pooling, manifest.normalize) == ("", False)
    assert manifest.validation["verified"] and manifest.validation["max_abs_diff"] <= 1e-3
    assert printed["task"] == "sparse-embed"


def test_served_graph_equals_pytorch_and_padding_does_not_leak(
    converted: tuple[Path, dict[str, object]], checkpoint: Path
) -> None:
    out, _ = converted
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    batch = encode_padded(tokenizer, TEXTS, max_length=64)
    assert batch.attention_mask[0].sum() < batch.attention_mask.shape[1], "the short text is padded"
    engine = OnnxRuntimeCpuEngine(out / "model.onnx")
    try:
        served = engine.run(batch, 0)["sparse_weights"]
        alone = np.stack([engine.run(encode_padded(tokenizer, [t], 64), 0)["sparse_weights"][0] for t in TEXTS])
    finally:
        engine.close()
    assert served.shape == (3, 30522) and served.dtype == np.float32
    reference = pytorch_splade(checkpoint, TEXTS, tokenizer)
    np.testing.assert_allclose(served, reference, atol=1e-4)
    # Padding rows would add their own (non-zero) weights to the max; padded and alone must agree.
    np.testing.assert_allclose(served, alone, atol=1e-5)
    assert (served >= 0).all() and (served > 0).any()
    indices, values = sparsify(served[1])
    np.testing.assert_array_equal(values, served[1][indices])
    assert np.all(np.diff(indices) > 0) and 0 < indices.size < 30522


def test_a_checkpoint_without_a_masked_lm_head_is_refused(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "bert", "embed")
    with pytest.raises(ConversionError, match="needs a masked-LM checkpoint"):
        convert(ConvertOptions(source=str(checkpoint), output=tmp_path / "out", task="sparse-embed"),
                progress=lambda _: None)
    assert not (tmp_path / "out").exists()
